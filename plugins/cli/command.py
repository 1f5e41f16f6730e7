"""The `pycni` command: run a conflist against a network namespace like a container runtime does.

    pycni add|check|del CONFLIST NETNS [--container-id ID] [--ifname IF] [--args 'K=V;..']
                                      [--cap JSON] [--cni-path DIRS] [--cache-dir DIR]
    pycni status CONFLIST
    pycni gc CONFLIST [--valid CONTAINERID:IFNAME ...]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from pycni.plugins.cli.chain import DEFAULT_CACHE_DIR, Attachment, ChainRunner, NetworkList, default_container_id
from pycni.plugins.core.errors import DECODE_FAILURE, CNIError
from pycni.plugins.core.versions import CURRENT_VERSION


def _netns_path(netns: str) -> str:
    """Accept a bare `ip netns` name as well as a path."""
    return netns if "/" in netns else f"/var/run/netns/{netns}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pycni", description="Run a CNI conflist like a container runtime (libcni).")
    p.add_argument("command", choices=["add", "check", "del", "status", "gc"])
    p.add_argument("conflist", help="path to a .conflist (or single-plugin .conf) file")
    p.add_argument("netns", nargs="?", default="", help="netns path or `ip netns` name (add/check/del)")
    p.add_argument("--container-id", help="default: derived from the netns path")
    p.add_argument("--ifname", default="eth0")
    p.add_argument("--args", default="", help="CNI_ARGS, e.g. 'IgnoreUnknown=1;K8S_POD_NAME=web'")
    p.add_argument("--cap", default="{}", help="capability args as JSON, e.g. '{\"ips\": [\"10.1.0.9/24\"]}'")
    p.add_argument("--cni-path", default=os.environ.get("CNI_PATH", "/opt/cni/bin"),
                   help="':'-separated plugin dirs (default: $CNI_PATH or /opt/cni/bin)")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, help="libcni cache dir (results/ inside)")
    p.add_argument("--valid", action="append", default=None, metavar="CONTAINERID:IFNAME",
                   help="gc: attachments to keep (default: every cached attachment of the network)")
    return p


def run(argv: Optional[List[str]] = None) -> int:
    opts = _parser().parse_args(argv)
    version = CURRENT_VERSION
    try:
        with open(opts.conflist, "rb") as f:
            net = NetworkList.parse(f.read())
        version = net.cni_version
        try:
            caps = json.loads(opts.cap)
        except ValueError as exc:
            raise CNIError(DECODE_FAILURE, f"--cap is not JSON: {exc}") from None
        runner = ChainRunner(opts.cni_path.split(":"), opts.cache_dir)
        if opts.command in ("add", "check", "del"):
            if not opts.netns and opts.command != "del":
                raise CNIError(4, f"{opts.command} needs a NETNS argument")
            netns = _netns_path(opts.netns) if opts.netns else ""
            att = Attachment(container_id=opts.container_id or default_container_id(netns or net.name),
                             ifname=opts.ifname, netns=netns, cni_args=opts.args, capabilities=caps)
            if opts.command == "add":
                print(json.dumps(runner.add(net, att), indent=4))
            elif opts.command == "check":
                runner.check(net, att)
            else:
                runner.delete(net, att)
        elif opts.command == "status":
            runner.status(net)
        else:
            valid = [tuple(v.split(":", 1)) for v in opts.valid] if opts.valid is not None \
                else runner.cached_attachments(net)
            errors = runner.gc(net, valid)
            if errors:
                raise errors[0]
    except CNIError as err:
        print(json.dumps(err.to_dict(version), indent=4))
        print(f"pycni {opts.command}: {err.msg}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(json.dumps(CNIError(5, str(exc)).to_dict(version), indent=4))
        print(f"pycni {opts.command}: {exc}", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
