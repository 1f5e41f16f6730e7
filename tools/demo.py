"""`make demo`: the installer's whole job on one machine, no Kubernetes.

1. pycni-installer (mounted-volume mode, kubelet's `..data` layout) installs the zipapps
   into a node bin dir and renders the node's conflist from the chart's default template;
2. two pods (network namespaces) are networked through that conflist by the `pycni`
   command, with the plugins from the node bin dir, and ping each other by name (pycni-dns);
3. the ConfigMap is edited as kubelet delivers an edit: the node file follows (delay measured);
4. an invalid edit is refused: /readyz and the log say why, the node file stays byte for byte;
5. everything made is removed, also when interrupted (Ctrl-C / SIGTERM).

Everything lives in one temp dir and uniquely named kernel objects, so several runs can share
a machine; nothing of the host's /opt/cni/bin or /etc/cni/net.d is read or written.
"""
from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import List

import yaml

from demo_node import (ConfigMapVolume, InstallerProcess, delete_nft_chains, kill_all, nft_chains,
                       processes_mentioning)
from pycni.plugins.kernel.attachment import network_prefix

ROOT = Path(__file__).resolve().parent.parent
VALUES = ROOT / "charts" / "pycni" / "values.yaml"
KEY, CONF_NAME, NODE = "conflist.yaml", "10-pycni.conflist", "demo-node"
EDIT = {"mtu": 1280, "hairpinMode": True}  # the admin's edit of step 3


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def say(label: str, text: str) -> None:
    print(f"    {label:<11} {text}", flush=True)


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: command failed: {' '.join(cmd)}\n{proc.stdout.strip()}")
    return proc


def free_subnet() -> str:
    """A /24 in 10.200.0.0/13 no route of this machine overlaps (concurrent demos pick different ones)."""
    routes = run("ip", "-4", "-o", "route", "show", "table", "all").stdout.split()
    used = [ipaddress.ip_network(w, strict=False) for w in routes if "/" in w and w[0].isdigit()]
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{random.randint(200, 207)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return str(net)
    raise SystemExit("demo: no free /24 in 10.200.0.0/13")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Demo:
    def __init__(self, source_bin: Path) -> None:
        self.suffix = uuid.uuid4().hex[:6]
        self.source_bin = source_bin
        self.work = Path(tempfile.mkdtemp(prefix=f"pycni-demo-{self.suffix}-"))
        self.bin_dir = self.work / "node" / "opt-cni-bin"
        self.conf_dir = self.work / "node" / "etc-cni-net.d"
        self.node_conflist = self.conf_dir / CONF_NAME
        self.bin_dir.mkdir(parents=True)  # a hostPath: it exists on a node
        self.network = f"pycni-demo-{self.suffix}"
        self.bridge = f"pycdemo{self.suffix}"
        self.subnet = free_subnet()
        self.pods: List[str] = []
        self.installer = None  # type: InstallerProcess | None
        self.volume = ConfigMapVolume(self.work / "configmap", KEY)
        self.started = time.monotonic()

    # -- the ConfigMap: the chart's built-in default with `dns.enabled: true` (pods resolve each other by
    #    name, as standalone runtimes do), names made unique for a shared machine --
    def template(self, **bridge_overrides: object) -> str:
        values = yaml.safe_load(VALUES.read_text())
        conflist = values["conflist"]
        conflist["name"] = self.network
        conflist["plugins"].append({"type": "pycni-dns", **values["dns"]["config"]})  # as configmap.yaml does
        bridge, dns = conflist["plugins"][0], conflist["plugins"][-1]
        bridge["bridge"] = self.bridge
        bridge["ipam"]["dataDir"] = str(self.work / "host-local")
        bridge.update(bridge_overrides)
        dns.update(domainName="__NODE_NAME__.pycni", stateDir=str(self.work / "dns"))
        return yaml.safe_dump(conflist, sort_keys=False)

    def install(self) -> None:
        step("1. The installer installs the plugins and renders the node's conflist from the ConfigMap")
        self.volume.publish(self.template())
        say("ConfigMap", f"the chart's default conflist (charts/pycni/values.yaml, dns.enabled), bridge {self.bridge}, "
                         f"network {self.network}")
        placeholders = [line.strip() for line in self.volume.text().splitlines() if "__" in line]
        say("template", "; ".join(placeholders))
        say("volume", f"{self.volume.path}: {self.volume.layout()}")
        self.installer = InstallerProcess(
            ["--source-dir", str(self.source_bin), "--bin-dir", str(self.bin_dir), "--conf-dir", str(self.conf_dir),
             "--config-dir", str(self.volume.path), "--config-key", KEY, "--node-name", NODE,
             "--pod-cidrs", self.subnet, "--resync-seconds", "3600"], self.work / "installer.log")
        say("installer", f"python -m pycni.installer --config-dir {self.volume.path.name} --node-name {NODE} "
                         f"--pod-cidrs {self.subnet} (pid {self.installer.proc.pid})")
        t0 = time.monotonic()
        self.installer.wait("ready", lambda: self.installer.readyz()[0] == 200, 60)
        installed = sorted(p.name for p in self.bin_dir.iterdir() if not p.name.startswith("."))
        say("installed", f"{self.bin_dir}: {' '.join(installed)}")
        rendered = json.loads(self.node_conflist.read_text())
        bridge, dns = rendered["plugins"][0], rendered["plugins"][-1]
        say("rendered", f"{self.node_conflist} after {time.monotonic() - t0:.1f} s:")
        detected = self.installer.events("mtu_detected")
        source = f" (__MTU__: {detected[-1].get('source')})" if detected else ""
        say("", f"mtu {bridge['mtu']}{source}, ranges {json.dumps(bridge['ipam']['ranges'])}, "
                f"domainName {dns['domainName']}")
        say("/readyz", " ".join(map(str, self.installer.readyz())))

    # -- the pods --
    def pycni(self, verb: str, pod: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(sys.executable, "-m", "pycni.plugins.cli.command", verb, str(self.node_conflist), pod,
                   "--container-id", pod, "--cni-path", str(self.bin_dir), "--cache-dir", str(self.work / "cache"),
                   "--args", f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}", check=check)

    def network_pods(self) -> None:
        step("2. Two pods are networked through that conflist and reach each other by name")
        for name in ("web", "db"):
            pod = f"{name}-{self.suffix}"
            self.pods.append(pod)  # before it exists: an interrupt right after must still remove it
            run("ip", "netns", "add", pod)
            result = json.loads(self.pycni("add", pod).stdout)
            ips = ", ".join(ip["address"] for ip in result.get("ips", []))
            dns = result.get("dns", {})
            self.write_resolv_conf(pod, dns)
            say(f"pod {name}", f"netns {pod}: eth0 {ips}; nameserver {', '.join(dns.get('nameservers', []))}, "
                               f"search {' '.join(dns.get('search', []))}")
        web, db = self.pods
        ping = run("ip", "netns", "exec", web, "ping", "-c", "2", "-i", "0.2", "-W", "2", db).stdout.splitlines()
        say("ping", f"{web} -> {db}: {ping[0]}")
        say("", next(line for line in ping if "received" in line))

    @staticmethod
    def write_resolv_conf(pod: str, dns: dict) -> None:
        """What a runtime does with the result's dns: the pod's resolv.conf (`ip netns exec` mounts it)."""
        lines = [f"nameserver {ns}" for ns in dns.get("nameservers", [])]
        if dns.get("search"):
            lines.append("search " + " ".join(dns["search"]))
        path = Path("/etc/netns") / pod / "resolv.conf"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")

    # -- edits --
    def edit(self) -> None:
        step("3. An admin edits the ConfigMap (kubelet swaps ..data): the node file follows")
        before = json.loads(self.node_conflist.read_text())["plugins"][0]
        old, writes = self.node_conflist.read_bytes(), len(self.installer.events("conflist_written"))
        swapped = self.volume.publish(self.template(**EDIT))
        say("edit", "pycni-bridge: mtu __MTU__ -> 1280, hairpinMode: true")
        self.installer.wait("the edit reaching the node", lambda: self.node_conflist.read_bytes() != old)
        delay = time.monotonic() - swapped
        self.installer.wait("conflist_written in the log",
                            lambda: len(self.installer.events("conflist_written")) > writes)
        after = json.loads(self.node_conflist.read_text())["plugins"][0]
        say("node file", f"mtu {before['mtu']} -> {after['mtu']}, hairpinMode {before.get('hairpinMode')} -> "
                         f"{after.get('hairpinMode')}: rewritten {delay * 1000:.0f} ms after the swap")
        why = self.installer.events("conflist_written")[-1].get("why")
        say("log", f"conflist_written ({why})")

    def invalid_edit(self) -> None:
        step("4. An invalid edit is refused: the node keeps its last good conflist")
        good, digest = self.node_conflist.read_bytes(), sha(self.node_conflist)
        text = self.template(**EDIT).replace("type: pycni-bridge", "type: pycni-brige")
        self.volume.publish(text)
        say("edit", "type: pycni-bridge -> pycni-brige (a typo)")
        status, body = self.installer.wait("the rejection on /readyz",
                                           lambda: (lambda r: r if r[0] == 503 else None)(self.installer.readyz()))
        say("/readyz", f"{status} {body}")
        rejected = self.installer.wait("config_rejected in the log", lambda: self.installer.events("config_rejected"))
        say("log", f"config_rejected ({rejected[-1].get('kind')}): {rejected[-1].get('why')}")
        same = self.node_conflist.read_bytes() == good
        say("node file", f"{'unchanged, byte for byte' if same else 'CHANGED'} (sha256 {digest[:16]}...)")
        if not same:
            raise SystemExit("demo: the invalid edit reached the node file")

    # -- cleanup --
    def cleanup(self) -> List[str]:
        """Remove everything the demo made; return what is still there (nothing, normally)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        step("5. Clean up: DEL the pods, stop the installer, uninstall, remove what the demo made")
        if self.node_conflist.exists():
            for pod in reversed(self.pods):
                proc = self.pycni("del", pod, check=False)
                say("DEL", f"{pod}: {'ok' if proc.returncode == 0 else proc.stdout.strip()}")
        for pod in self.pods:
            run("ip", "netns", "del", pod, check=False)
            shutil.rmtree(Path("/etc/netns") / pod, ignore_errors=True)
        if self.installer is not None:
            code = self.installer.stop()
            say("installer", f"stopped by SIGTERM (exit code {code}); it leaves the node's files in place")
            self.uninstall()
        run("ip", "link", "del", self.bridge, check=False)
        delete_nft_chains(nft_chains(self.nft_prefix))
        kill_all(processes_mentioning(str(self.work)))  # the network's DNS server, if a DEL did not stop it
        shutil.rmtree(self.work, ignore_errors=True)
        left = self.leftovers()
        say("left", ", ".join(left) if left else "nothing: no netns, bridge, nft chain, process or temp dir remains")
        return left

    def uninstall(self) -> None:
        proc = run(sys.executable, "-m", "pycni.installer", "uninstall", "--bin-dir", str(self.bin_dir),
                   "--conf-dir", str(self.conf_dir), "--conf-name", CONF_NAME, check=False)
        removed = [json.loads(line).get("file", "") for line in proc.stdout.splitlines()
                   if line.startswith("{") and '"uninstall_removed"' in line]
        say("uninstall", f"removed {len(removed)} files the installer wrote: "
                         f"{' '.join(sorted(Path(f).name for f in removed))}")

    @property
    def nft_prefix(self) -> str:
        return "pycni-" + network_prefix(self.network).split(":")[1] + "-"

    def leftovers(self) -> List[str]:
        netns = run("ip", "netns", "list", check=False).stdout
        left = [f"netns {p}" for p in self.pods if p in netns]
        left += [f"/etc/netns/{p}" for p in self.pods if (Path("/etc/netns") / p).exists()]
        left += [f"bridge {self.bridge}"] if Path(f"/sys/class/net/{self.bridge}").exists() else []
        left += [f"nft chain {c}" for c in nft_chains(self.nft_prefix)]
        left += [f"process {pid}" for pid in processes_mentioning(str(self.work))]
        left += [str(self.work)] if self.work.exists() else []
        return left


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", type=Path, default=ROOT / "dist" / "bin",
                        help="the built zipapps, the installer's source dir (default dist/bin)")
    args = parser.parse_args()
    if not args.bin.joinpath("pycni-bridge").exists():
        raise SystemExit("demo: build the zipapps first (make zipapps)")
    if os.geteuid() != 0:
        raise SystemExit("demo: run as root (it makes network namespaces, a bridge and nftables rules)")

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    demo = Demo(args.bin.resolve())
    print(f"pycni demo: a node in {demo.work}, pod network {demo.subnet}", flush=True)
    code = 0
    try:
        demo.install()
        demo.network_pods()
        demo.edit()
        demo.invalid_edit()
    except KeyboardInterrupt:
        print("\ndemo: interrupted", flush=True)
        code = 130
    except SystemExit as exc:
        print(exc, file=sys.stderr, flush=True)
        code = 1
    finally:
        left = demo.cleanup()
    if left:
        code = code or 1
    elif code == 0:
        step(f"done in {time.monotonic() - demo.started:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
