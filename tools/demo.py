"""`make demo`: two network namespaces networked by pycni on the built-in default conflist.

Creates the namespaces, runs ADD through the `pycni` command (the same chain a
runtime runs: pycni-bridge + pycni-host-local + pycni-dns), shows addresses,
pings, resolves names, then DELs and removes everything — also when
interrupted (Ctrl-C / SIGTERM).
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "dist" / "bin"
SUFFIX = uuid.uuid4().hex[:6]
NETWORK = f"demo-{SUFFIX}"
BRIDGE = f"pycdemo{SUFFIX}"[:15]
SUBNET = "10.250.0.0/24"


def default_conflist(workdir: Path) -> dict:
    return {
        "cniVersion": "1.1.0",
        "name": NETWORK,
        "plugins": [
            {"type": "pycni-bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True,
             "ipam": {"type": "pycni-host-local", "ranges": [[{"subnet": SUBNET}]],
                      "dataDir": str(workdir / "ipam")}},
            {"type": "pycni-dns", "domainName": "demo.pycni", "stateDir": str(workdir / "dns"),
             "capabilities": {"aliases": True}},
        ],
    }


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def run(*cmd: str, check: bool = True, show: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if show and proc.stdout.strip():
        print("    " + proc.stdout.strip().replace("\n", "\n    "))
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: command failed: {' '.join(cmd)}")
    return proc


class Demo:
    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="pycni-demo-"))
        self.conflist = self.workdir / "10-pycni.conflist"
        self.conflist.write_text(json.dumps(default_conflist(self.workdir), indent=2))
        self.pods: List[str] = []

    def pycni(self, verb: str, pod: str) -> subprocess.CompletedProcess:
        return run(sys.executable, "-m", "pycni.plugins.cli", verb, str(self.conflist), pod,
                   "--container-id", pod, "--cni-path", str(BIN), "--cache-dir", str(self.workdir / "cache"),
                   "--args", f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}", show=False,
                   check=verb != "del")

    def start(self) -> None:
        step(f"conflist {self.conflist}")
        print("    " + self.conflist.read_text().replace("\n", "\n    "))
        for name in ("web", "db"):
            pod = f"{name}-{SUFFIX}"
            step(f"pod {pod}: new network namespace, ADD")
            run("ip", "netns", "add", pod)
            self.pods.append(pod)
            result = json.loads(self.pycni("add", pod).stdout)
            ips = ", ".join(ip["address"] for ip in result.get("ips", []))
            print(f"    got {ips}; nameservers {result.get('dns', {}).get('nameservers')}")
            run("ip", "-n", pod, "-brief", "address", "show", "eth0")
        a, b = self.pods
        step(f"{a} pings {b} by name through the network's DNS server")
        run("ip", "netns", "exec", a, "ping", "-c", "2", "-W", "2", f"{b}.demo.pycni")
        step(f"{a} pings the gateway")
        run("ip", "netns", "exec", a, "ping", "-c", "1", "-W", "2", SUBNET.replace("0/24", "1"))

    def cleanup(self) -> None:
        step("DEL every pod and remove what the demo made")
        for pod in reversed(self.pods):
            self.pycni("del", pod)
            run("ip", "netns", "del", pod, check=False, show=False)
        run("ip", "link", "del", BRIDGE, check=False, show=False)
        shutil.rmtree(self.workdir, ignore_errors=True)
        print("    clean: no namespaces, bridge, addresses or DNS records of the demo remain")


def main() -> None:
    if not BIN.joinpath("pycni-bridge").exists():
        raise SystemExit("demo: build the zipapps first (make zipapps)")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    demo = Demo()
    try:
        demo.start()
        step("done: two pods had working networking from pycni")
    except KeyboardInterrupt:
        print("\ndemo: interrupted", flush=True)
    finally:
        demo.cleanup()


if __name__ == "__main__":
    main()
