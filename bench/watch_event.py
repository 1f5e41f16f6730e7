"""Per-event client cost of a Node watch: kubernetes' Watch.stream (each event deserialised into a
V1Node model, what installer/watch.py did) vs `raw_events` (json.loads only, what it does now).

The API's answer is replayed from memory (N Node events of ~7 KB, a real kubelet-registered Node's
size), so the figure is the client's CPU per event, without the network. No Go reference applies.
Run: .venv/bin/python bench/watch_event.py [events] [rounds]
"""
from __future__ import annotations

import functools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def node(i: int) -> dict:
    """A Node as a kubelet registers it: labels, annotations, managedFields, conditions, images."""
    conditions = [{"type": t, "status": "False", "lastHeartbeatTime": "2026-11-30T10:00:00Z",
                   "lastTransitionTime": "2026-11-01T10:00:00Z", "reason": f"Kubelet{t}", "message": f"kubelet {t}"}
                  for t in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")]
    images = [{"names": [f"registry.k8s.io/image-{j}@sha256:{'ab' * 32}", f"registry.k8s.io/image-{j}:v1.{j}"],
               "sizeBytes": 10_000_000 + j} for j in range(24)]
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": f"node-{i}", "uid": f"{i:08d}-0000-4000-8000-000000000000", "resourceVersion": str(1000 + i),
                     "creationTimestamp": "2026-11-01T10:00:00Z",
                     "labels": {"kubernetes.io/hostname": f"node-{i}", "kubernetes.io/os": "linux",
                                "kubernetes.io/arch": "amd64", "node.kubernetes.io/instance-type": "m5.large",
                                "topology.kubernetes.io/zone": "zone-a", "topology.kubernetes.io/region": "region"},
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0", "pycni.dev/vtep-mac": "02:aa:bb:cc:dd:ee",
                                     "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
                     "managedFields": [{"manager": m, "operation": "Update", "apiVersion": "v1",
                                        "time": "2026-11-30T10:00:00Z", "fieldsType": "FieldsV1",
                                        "fieldsV1": {"f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {}}}}}
                                       for m in ("kubelet", "kube-controller-manager", "pycni-agent")]},
        "spec": {"podCIDR": f"10.244.{i % 250}.0/24", "podCIDRs": [f"10.244.{i % 250}.0/24"],
                 "providerID": f"aws:///zone-a/i-{i:017d}"},
        "status": {"capacity": {"cpu": "2", "memory": "8000000Ki", "pods": "110", "ephemeral-storage": "100Gi"},
                   "allocatable": {"cpu": "2", "memory": "7800000Ki", "pods": "110", "ephemeral-storage": "90Gi"},
                   "conditions": conditions,
                   "addresses": [{"type": "InternalIP", "address": f"192.168.{i // 250}.{i % 250}"},
                                 {"type": "Hostname", "address": f"node-{i}"}],
                   "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                   "nodeInfo": {"machineID": "m" * 32, "systemUUID": "u" * 36, "bootID": "b" * 36,
                                "kernelVersion": "6.1.0", "osImage": "Debian GNU/Linux 12", "containerRuntimeVersion":
                                "containerd://1.7", "kubeletVersion": "v1.31.0", "kubeProxyVersion": "v1.31.0",
                                "operatingSystem": "linux", "architecture": "amd64"},
                   "images": images},
    }


class Replay:
    """What `list_node(watch=True, _preload_content=False)` returns, replaying recorded event lines."""

    status, reason = 200, "OK"

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
        for start in range(0, len(self.body), 65536):
            yield self.body[start:start + 65536]

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


def main() -> None:
    from kubernetes import client, watch

    from pycni.installer.watch import raw_events

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    lines = [json.dumps({"type": "MODIFIED", "object": node(i)}) for i in range(n)]
    body = ("\n".join(lines) + "\n").encode()
    core = client.CoreV1Api(client.ApiClient())

    @functools.wraps(core.list_node)  # Watch finds the model (V1NodeList -> V1Node) in its signature
    def list_node(*args: Any, **kwargs: Any) -> Replay:
        return Replay(body)

    def model_watch() -> None:
        for event in watch.Watch().stream(list_node, timeout_seconds=1):
            assert event["raw_object"]["kind"] == "Node"

    def raw_watch() -> None:
        for event in raw_events(list_node, timeout_seconds=1):
            assert event["object"]["kind"] == "Node"

    def per_event(fn: Callable[[], None]) -> List[float]:
        out = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) / n * 1000)
        return out

    print(f"Node watch event: {len(lines[0])} bytes, {n} events x {rounds} rounds, python {sys.version.split()[0]}")
    results = {"Watch.stream (V1Node models)": per_event(model_watch), "raw_events (json.loads)": per_event(raw_watch)}
    for name, samples in results.items():
        print(f"  {name:32s} median {statistics.median(samples):.3f} ms/event")
    old, new = (statistics.median(s) for s in results.values())
    print(f"  ratio old/new {old / new:.1f}x")


if __name__ == "__main__":
    main()
