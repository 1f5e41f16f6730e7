"""The plugin contract: (environment mapping, stdin bytes) -> (stdout bytes, exit code).

No process-global state is read or written here; `entry` adapts a real
process to this function and other callers (tests, a node server) call it directly.
"""
from __future__ import annotations

from pycni.plugins.core.errors import INCOMPATIBLE_VERSION, INTERNAL, INVALID_ENVIRONMENT, CNIError
from pycni.plugins.core.versions import CURRENT_VERSION, SUPPORTED_VERSIONS, at_least

TYPE_CHECKING = False  # importing typing costs milliseconds on every exec of VERSION
if TYPE_CHECKING:
    from typing import Callable, Mapping, Optional, Tuple

    from pycni.plugins.core.invoke import Runner
    from pycni.plugins.core.plugin import Plugin

    PluginLoader = Callable[[], Plugin]


def _dump(obj: dict) -> bytes:
    import json  # not at module level: VERSION, the most frequent call, needs no json

    return json.dumps(obj, indent=4).encode() + b"\n"


def _version_output() -> bytes:
    versions = ", ".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
    return f'{{"cniVersion": "{CURRENT_VERSION}", "supportedVersions": [{versions}]}}\n'.encode()


def _error_version(stdin: bytes) -> str:
    """The version to print an error at: the config's when it is readable and supported."""
    from pycni.plugins.core.jsonio import loads

    try:
        version = loads(stdin).get("cniVersion")
    except Exception:
        return CURRENT_VERSION
    return version if version in SUPPORTED_VERSIONS else CURRENT_VERSION


def run_request(plugin_name: str, environ: Mapping[str, str], stdin: bytes,
                runner: Optional[Runner] = None) -> Tuple[bytes, int]:
    """One request to the pycni binary `plugin_name` (core/registry.py).

    The one path of every request: an exec (entry.main), the node server's
    workers and an in-process IPAM delegate of the same build (samebuild.py).
    """
    from pycni.plugins.core.registry import load

    return run(lambda: load(plugin_name), environ, stdin, runner)


def warm_up() -> None:
    """Import everything a request imports lazily, for every plugin of the table (node server)."""
    import json  # noqa: F401

    from pycni.plugins.core import config, delegate, env, log, plugin  # noqa: F401  (_run_verb's lazy imports)
    from pycni.plugins.core.registry import PLUGIN_MODULES, load

    for name in PLUGIN_MODULES:
        load(name).warm_up()


def run(load_plugin: PluginLoader, environ: Mapping[str, str], stdin: bytes,
        runner: Optional[Runner] = None) -> Tuple[bytes, int]:
    """Execute one CNI request. `runner` replaces exec for IPAM delegation (see invoke.Runner)."""
    log = None
    try:
        if environ.get("CNI_COMMAND") == "VERSION":
            return _version_output(), 0
        return _run_verb(load_plugin, environ, stdin, runner)
    except CNIError as err:
        return _dump(err.to_dict(_error_version(stdin))), 1
    except Exception as exc:  # a bug: report it as the spec's error, never a traceback on stdout
        import traceback

        detail = traceback.format_exc()
        try:
            from pycni.plugins.core.log import EventLog

            log = EventLog.from_settings({}, environ)
            log.error("internal_error", error=repr(exc), traceback=detail)
        except Exception:
            pass
        internal = CNIError(INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        return _dump(internal.to_dict(_error_version(stdin))), 1


def _run_verb(load_plugin: PluginLoader, environ: Mapping[str, str], stdin: bytes,
              runner: Optional[Runner]) -> Tuple[bytes, int]:
    from pycni.plugins.core.config import parse_netconf
    from pycni.plugins.core.env import Invocation
    from pycni.plugins.core.log import EventLog
    from pycni.plugins.core.plugin import Context

    inv = Invocation.from_environ(environ)
    conf = parse_netconf(stdin)
    if inv.command in ("STATUS", "GC") and not at_least(conf.cni_version, "1.1.0"):
        raise CNIError(INCOMPATIBLE_VERSION, f"{inv.command} needs cniVersion 1.1.0, config has {conf.cni_version}")
    if inv.command == "GC":
        conf.valid_attachments  # noqa: B018 -- code 7 before any plugin deletes anything when it is missing
    if inv.command == "CHECK" and not at_least(conf.cni_version, "0.4.0"):
        raise CNIError(INCOMPATIBLE_VERSION, f"CHECK needs cniVersion 0.4.0 or newer, config has {conf.cni_version}")
    plugin = load_plugin()
    inv.args.require_known(plugin.known_args)
    log = EventLog.from_settings(conf.raw, environ, network=conf.name, container=inv.container_id,
                                 ifname=inv.ifname, plugin=conf.type)
    config = plugin.load_config(conf)
    ipam = None
    if plugin.delegates_ipam and conf.ipam_type:
        from pycni.plugins.core.delegate import IpamDelegate  # subprocess: only for plugins that delegate

        ipam = IpamDelegate(conf.ipam_type, inv, stdin, runner)
    ctx = Context(inv=inv, conf=conf, config=config, stdin=stdin, log=log, ipam=ipam)
    log.debug("request", command=inv.command, netns=inv.netns)
    try:
        if inv.command == "ADD":
            result = plugin.add(ctx)
            log.event("added", ips=[str(ip.address) for ip in result.ips])
            return _dump(result.to_dict(conf.cni_version)), 0
        verb = {"DEL": plugin.delete, "CHECK": plugin.check, "STATUS": plugin.status, "GC": plugin.gc}
        verb[inv.command](ctx)
        log.event("done", command=inv.command)
        return b"", 0
    except NotImplementedError:
        raise CNIError(INVALID_ENVIRONMENT, f"{plugin.name} does not implement CNI_COMMAND={inv.command}") from None
    except CNIError as err:
        log.error("failed", command=inv.command, code=err.code, msg=err.msg, details=err.details)
        raise
