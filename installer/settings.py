"""Command line and environment: every flag has an env var (the DaemonSet sets env); a flag wins."""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Mapping, Optional, Tuple

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Settings:
    command: str  # "run" | "uninstall"
    once: bool
    source_dir: Path
    bin_dir: Path
    conf_dir: Path
    conf_name: str
    config_dir: Optional[Path]  # mounted ConfigMap volume, None = off
    config_key: str
    configmap: Optional[Tuple[str, str]]  # (namespace, name), None = no API watch
    watch_api: bool
    node_name: str
    mtu: int
    listen: Optional[Tuple[str, int]]  # None = no health server
    resync_seconds: float
    exclusive: bool
    log_level: str
    once_timeout: float
    watch_timeout_seconds: int
    debounce_seconds: float
    pod_cidrs: Tuple[str, ...] = ()  # given by hand (no Kubernetes): used instead of the Node's
    # the node check (nodecheck.py): how the plugins are run as the runtime would run them
    host_root: str = "/host/root"  # the host's / as mounted here; "/" = no chroot
    host_root_explicit: bool = False  # set by flag/env (a missing one is then an error)
    host_bin_dir: str = ""  # the bin dir's path on the host; "" = find it
    binary_check_timeout: float = 30.0
    runtime_path: str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # PATH the runtime gives plugins
    in_pod: bool = False  # KUBERNETES_SERVICE_HOST is set
    runtime_bundle: Optional[Path] = None  # the image's CPython bundle (installer/bundle.py); None = none
    # this installer's own Pod (downward API), for Events
    pod_name: str = ""
    pod_namespace: str = ""
    pod_uid: str = ""
    # uninstall: also the node's pycni state (cleanup.py); then wait for SIGTERM, marker written
    node_cleanup: bool = False
    idle: bool = False
    done_marker: str = "/tmp/pycni-uninstalled"
    sync_stuck_seconds: float = 300.0

    @property
    def conf_path(self) -> Path:
        return self.conf_dir / self.conf_name


CONF_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.conflist$")
CONF_NAME_MAX = 255


def conf_name_problem(name: str) -> str:
    """Why `name` cannot be the conflist's file name ('' when it can).

    libcni loads *.conf, *.conflist and *.json of the conf dir sorted by name and the first one is the
    node's default network: a hidden name (".conflist", "..conflist", ".x.conflist") sorts before
    every other one, and control characters or spaces make a name nobody can read in a listing."""
    if len(name) > CONF_NAME_MAX:
        return f"is longer than {CONF_NAME_MAX} characters"
    if not CONF_NAME.match(name):
        return ("must be a plain file name ending in .conflist that starts with a letter or digit, then "
                "letters, digits, '.', '_', '-' (e.g. 10-pycni.conflist)")
    return ""


def parse_bool(text: str, what: str) -> bool:
    value = text.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ValueError(f"{what}: expected true or false, got {text!r}")


def parse_listen(text: str) -> Optional[Tuple[str, int]]:
    if not text or text in ("off", "none"):
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen: expected HOST:PORT, got {text!r}")
    return (host.strip("[]") or "0.0.0.0", int(port))


def parse_configmap(text: str) -> Optional[Tuple[str, str]]:
    if not text:
        return None
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"--configmap: expected NAMESPACE/NAME, got {text!r}")
    return namespace, name


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    def e(name: str, default: str) -> str:
        return env.get(name, default)

    p = argparse.ArgumentParser(
        prog="pycni-installer",
        description="Install the pycni plugins on this node and keep its conflist in sync with a ConfigMap.",
    )
    p.add_argument("command", nargs="?", default="run", choices=["run", "uninstall"],
                   help="run (default): install, render, keep in sync; uninstall: remove what we installed")
    p.add_argument("--once", action="store_true", default=parse_bool(e("PYCNI_ONCE", ""), "PYCNI_ONCE"),
                   help="install binaries and render the config once, then exit (non-zero on failure)")
    p.add_argument("--source-dir", default=e("PYCNI_SOURCE_DIR", "/opt/pycni/bin"))
    p.add_argument("--bin-dir", default=e("PYCNI_BIN_DIR", "/host/opt/cni/bin"))
    p.add_argument("--conf-dir", default=e("PYCNI_CONF_DIR", "/host/etc/cni/net.d"))
    p.add_argument("--conf-name", default=e("PYCNI_CONF_NAME", "10-pycni.conflist"))
    p.add_argument("--config-dir", default=e("PYCNI_CONFIG_DIR", "/etc/pycni/config"),
                   help='mounted ConfigMap volume ("" = off)')
    p.add_argument("--config-key", default=e("PYCNI_CONFIG_KEY", "conflist.yaml"))
    p.add_argument("--configmap", default=e("PYCNI_CONFIGMAP", ""),
                   help="NAMESPACE/NAME of the ConfigMap to watch through the API")
    p.add_argument("--watch-api", dest="watch_api", action="store_true", default=None)
    p.add_argument("--no-watch-api", dest="watch_api", action="store_false")
    p.add_argument("--node-name", default=e("PYCNI_NODE_NAME", env.get("NODE_NAME", "")))
    p.add_argument("--mtu", type=int, default=int(e("PYCNI_MTU", "0") or 0),
                   help="value of __MTU__; 0 = the MTU of the host's default-route interface")
    p.add_argument("--listen", default=e("PYCNI_LISTEN", "0.0.0.0:9765"),
                   help='HOST:PORT for /healthz, /readyz, /metrics ("off" = no server)')
    p.add_argument("--resync-seconds", type=float, default=float(e("PYCNI_RESYNC_SECONDS", "60") or 60))
    p.add_argument("--exclusive", action="store_true",
                   default=parse_bool(e("PYCNI_EXCLUSIVE", "false"), "PYCNI_EXCLUSIVE"),
                   help="move other CNI configs in the conf dir aside (restored by uninstall)")
    p.add_argument("--log-level", default=e("PYCNI_LOG_LEVEL", "info"), choices=["debug", "info", "warning", "error"])
    p.add_argument("--once-timeout", type=float, default=float(e("PYCNI_ONCE_TIMEOUT", "120") or 120),
                   help="--once: how long to wait for the ConfigMap and the node's podCIDR")
    p.add_argument("--watch-timeout-seconds", type=int,
                   default=int(e("PYCNI_WATCH_TIMEOUT_SECONDS", "300") or 300),
                   help="server-side timeout of one watch request (a new watch follows)")
    p.add_argument("--debounce-seconds", type=float, default=float(e("PYCNI_DEBOUNCE_SECONDS", "0.05") or 0.05),
                   help="quiet time after a change before the config is rendered")
    p.add_argument("--pod-cidrs", default=e("PYCNI_POD_CIDRS", ""),
                   help="comma-separated pod CIDRs of this node for the podCIDR placeholders, for nodes "
                        "without Kubernetes (default: the Node object's spec.podCIDRs)")
    p.add_argument("--host-root", default=env.get("PYCNI_HOST_ROOT"),
                   help="the host's / as mounted in this container, read-only (default /host/root; when that "
                        "does not exist outside a pod: \"/\", no chroot); the plugins are run chrooted into it")
    p.add_argument("--host-bin-dir", default=e("PYCNI_HOST_BIN_DIR", ""),
                   help="path of --bin-dir on the host (default: found by inode, e.g. /opt/cni/bin)")
    p.add_argument("--binary-check-timeout", type=float,
                   default=float(e("PYCNI_BINARY_CHECK_TIMEOUT", "30") or 30),
                   help="seconds a plugin may take to answer the VERSION check")
    p.add_argument("--runtime-path", default=e("PYCNI_RUNTIME_PATH",
                                               "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
                   help="PATH the container runtime gives the plugins (systemd's default unless its unit sets one)")
    p.add_argument("--sync-stuck-seconds", type=float,
                   default=float(e("PYCNI_SYNC_STUCK_SECONDS", "300") or 300),
                   help="a sync pass running longer than this makes /healthz and /readyz fail")
    p.add_argument("--runtime-bundle", default=e("PYCNI_RUNTIME_BUNDLE", "/opt/pycni/python"),
                   help="the CPython bundle to install beside the plugins for nodes without python3 (\"\" = none)")
    p.add_argument("--pod-name", default=e("PYCNI_POD_NAME", ""), help="this Pod (downward API), for Events")
    p.add_argument("--pod-namespace", default=e("PYCNI_POD_NAMESPACE", ""))
    p.add_argument("--pod-uid", default=e("PYCNI_POD_UID", ""),
                   help="this Pod's uid (downward API metadata.uid): kubectl describe pod matches Events by it")
    p.add_argument("--node", dest="node_cleanup", action="store_true",
                   help="uninstall: also remove the node's pycni state (agent nft table and routes, our "
                        "bridges, IPAM stores, DNS state)")
    p.add_argument("--idle", action="store_true",
                   help="uninstall: when done, write --done-marker and wait for SIGTERM (a DaemonSet pod)")
    p.add_argument("--done-marker", default=e("PYCNI_DONE_MARKER", "/tmp/pycni-uninstalled"))
    return p


def parse_pod_cidrs(text: str) -> Tuple[str, ...]:
    import ipaddress

    cidrs = tuple(c.strip() for c in text.split(",") if c.strip())
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr)
        except ValueError:
            raise ValueError(f"--pod-cidrs: {cidr!r} is not a network in CIDR notation") from None
    return cidrs


def parse(argv: Optional[List[str]], env: Mapping[str, str]) -> Settings:
    """Settings from argv and env; raises SystemExit (argparse) or ValueError on bad values."""
    args = _parser(env).parse_args(argv)
    configmap = parse_configmap(args.configmap)
    watch_api = args.watch_api
    if watch_api is None:
        raw = env.get("PYCNI_WATCH_API", "")
        watch_api = parse_bool(raw, "PYCNI_WATCH_API") if raw else configmap is not None
    if watch_api and configmap is None:
        raise ValueError("--watch-api needs --configmap NAMESPACE/NAME")
    if args.resync_seconds <= 0:
        raise ValueError("--resync-seconds must be positive")
    if args.mtu < 0:
        raise ValueError("--mtu must be >= 0")
    problem = conf_name_problem(args.conf_name)
    if problem:
        raise ValueError(f"--conf-name {args.conf_name!r} {problem}")
    if args.sync_stuck_seconds <= 0:
        raise ValueError("--sync-stuck-seconds must be positive")
    if args.binary_check_timeout <= 0:
        raise ValueError("--binary-check-timeout must be positive")
    return Settings(
        command=args.command,
        once=args.once,
        source_dir=Path(args.source_dir),
        bin_dir=Path(args.bin_dir),
        conf_dir=Path(args.conf_dir),
        conf_name=args.conf_name,
        config_dir=Path(args.config_dir) if args.config_dir else None,
        config_key=args.config_key,
        configmap=configmap,
        watch_api=watch_api,
        node_name=args.node_name,
        mtu=args.mtu,
        listen=parse_listen(args.listen),
        resync_seconds=args.resync_seconds,
        exclusive=args.exclusive,
        log_level=args.log_level,
        once_timeout=args.once_timeout,
        watch_timeout_seconds=args.watch_timeout_seconds,
        debounce_seconds=args.debounce_seconds,
        pod_cidrs=parse_pod_cidrs(args.pod_cidrs),
        host_root=args.host_root if args.host_root is not None else "/host/root",
        host_root_explicit=args.host_root is not None,
        host_bin_dir=args.host_bin_dir,
        binary_check_timeout=args.binary_check_timeout,
        runtime_path=args.runtime_path,
        in_pod=bool(env.get("KUBERNETES_SERVICE_HOST")),
        runtime_bundle=Path(args.runtime_bundle) if args.runtime_bundle else None,
        pod_name=args.pod_name,
        pod_namespace=args.pod_namespace,
        pod_uid=args.pod_uid,
        node_cleanup=args.node_cleanup,
        idle=args.idle,
        done_marker=args.done_marker,
        sync_stuck_seconds=args.sync_stuck_seconds,
    )
