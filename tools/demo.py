"""`make demo`: two network namespaces networked by pycni on the built-in default conflist.

Creates the namespaces, runs ADD through the `pycni` command (the same chain a
runtime runs: pycni-bridge + pycni-host-local + pycni-dns), shows addresses,
pings, resolves names, then DELs and removes everything — also when
interrupted (Ctrl-C / SIGTERM).
"""
from __future__ import annotations

import argparse
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
        return run(sys.executable, "-m", "pycni.plugins.cli.command", verb, str(self.conflist), pod,
                   "--container-id", pod, "--cni-path", str(BIN), "--cache-dir", str(self.workdir / "cache"),
                   "--args", f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}", show=False,
                   check=verb != "del")

    def start(self) -> None:
        step(f"conflist {self.conflist}")
        print("    " + self.conflist.read_text().replace("\n", "\n    "))
        for name in ("web", "db"):
            pod = f"{name}-{SUFFIX}"
            step(f"pod {pod}: new network namespace, ADD")
            self.pods.append(pod)  # before it exists: an interrupt right after must still remove it
            run("ip", "netns", "add", pod)
            result = json.loads(self.pycni("add", pod).stdout)
            ips = ", ".join(ip["address"] for ip in result.get("ips", []))
            dns = result.get("dns", {})
            print(f"    got {ips}; nameservers {dns.get('nameservers')}, search {dns.get('search')}")
            self.write_resolv_conf(pod, dns)
            run("ip", "-n", pod, "-brief", "address", "show", "eth0")
        a, b = self.pods
        step(f"{a} pings {b} by its name, resolved by the network's DNS server")
        run("ip", "netns", "exec", a, "ping", "-c", "2", "-W", "2", b)
        step(f"{a} pings the gateway")
        run("ip", "netns", "exec", a, "ping", "-c", "1", "-W", "2", SUBNET.replace("0/24", "1"))

    @staticmethod
    def write_resolv_conf(pod: str, dns: dict) -> None:
        """What a runtime does with the result's dns: the pod's resolv.conf (`ip netns exec` mounts it)."""
        lines = [f"nameserver {ns}" for ns in dns.get("nameservers", [])]
        if dns.get("search"):
            lines.append("search " + " ".join(dns["search"]))
        path = Path("/etc/netns") / pod / "resolv.conf"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        print(f"    resolv.conf of the pod: {'; '.join(lines)}")

    def cleanup(self) -> None:
        step("DEL every pod and remove what the demo made")
        for pod in reversed(self.pods):
            self.pycni("del", pod)
            run("ip", "netns", "del", pod, check=False, show=False)
            shutil.rmtree(Path("/etc/netns") / pod, ignore_errors=True)
        run("ip", "link", "del", BRIDGE, check=False, show=False)
        shutil.rmtree(self.workdir, ignore_errors=True)
        left = [p for p in self.pods if Path(f"/var/run/netns/{p}").exists()]
        left += [BRIDGE] if Path(f"/sys/class/net/{BRIDGE}").exists() else []
        left += [p for p in self.pods if (Path("/etc/netns") / p).exists()]
        print(f"    left behind: {left}" if left else "    clean: no namespace, bridge, address or DNS record remains")


def main() -> None:
    global BIN
    parser = argparse.ArgumentParser(description="pycni demo: two namespaces networked by pycni, then cleaned up")
    parser.add_argument("--bin", type=Path, default=BIN, help="dir with the built zipapps (default dist/bin)")
    BIN = parser.parse_args().bin
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
