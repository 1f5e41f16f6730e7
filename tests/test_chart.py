"""The Helm chart and the kubectl manifest, checked with a real helm and kubernetes-validate.

helm comes from tools/install-helm.sh (a registry package, cached on the machine). Every
rendered object is validated with `kubernetes-validate --strict` against Kubernetes 1.30 and
the newest version that package ships. The DaemonSet has up to three containers: installer,
pycni-server (node server) and pycni-agent (node agent).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence

import pytest
import yaml

from helpers import ROOT

# Packaging does not change with the node server: run once, not again in the with-server pass.
pytestmark = pytest.mark.standalone_only

CHART = ROOT / "charts" / "pycni"
MANIFEST = ROOT / "charts" / "pycni.yaml"
NAMESPACE = "kube-system"
OLDEST_K8S = "1.30.0"
# Env vars of the installer interface (the DaemonSet may set nothing else).
INSTALLER_ENV = {
    "PYCNI_SOURCE_DIR", "PYCNI_BIN_DIR", "PYCNI_CONF_DIR", "PYCNI_CONF_NAME", "PYCNI_CONFIG_DIR",
    "PYCNI_CONFIG_KEY", "PYCNI_CONFIGMAP", "PYCNI_WATCH_API", "PYCNI_NODE_NAME", "PYCNI_MTU",
    "PYCNI_LISTEN", "PYCNI_RESYNC_SECONDS", "PYCNI_EXCLUSIVE", "PYCNI_LOG_LEVEL",
    # added by the installer since: the node check's host root, this Pod for Events
    "PYCNI_HOST_ROOT", "PYCNI_POD_NAME", "PYCNI_POD_NAMESPACE", "PYCNI_POD_UID",
    # the bin dir's node path (messages name it), the API server address (kubernetes.apiServer)
    "PYCNI_HOST_BIN_DIR", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT",
}
API_ENV = {"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"}
# Env vars pycni-agent reads (agent/settings.py and the installer's API client).
AGENT_ENV = {
    "NODE_NAME", "PYCNI_NODE_NAME", "PYCNI_CONFIGMAP", "PYCNI_AGENT_CONFIG_KEY", "PYCNI_AGENT_LISTEN",
    "PYCNI_AGENT_RESYNC_SECONDS", "PYCNI_LOG_LEVEL", "PYCNI_WATCH_TIMEOUT_SECONDS", "PYCNI_DEBOUNCE_SECONDS",
    "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT",
}
SERVER_ENV = {"PYCNI_SERVER_SOCKET", "PYCNI_SERVER_MAX_WORKERS", "PYCNI_SERVER_IDLE_WORKERS",
              "PYCNI_SERVER_REQUESTS_PER_WORKER", "PYCNI_SERVER_RUN_TIMEOUT"}
SERVER_CAPS = ["NET_ADMIN", "SYS_ADMIN", "NET_BIND_SERVICE", "SYS_PTRACE"]
# Unprivileged, the server writes sysctls through the host's /proc/sys/net mounted here: the one
# host dir not at its own path inside (the runtime's /proc/sys is read-only).
PROC_SYS_NET = "/host/proc/sys/net"
AGENT_CAPS = ["NET_ADMIN", "NET_RAW"]
# The most RBAC may grant: (apiGroup, resource) -> verbs (patch on nodes: only with the agent).
ALLOWED_RULES = {
    ("", "nodes"): {"get", "list", "watch", "patch"},
    ("", "configmaps"): {"get", "list", "watch"},
    ("", "events"): {"create", "patch"},
}

CUSTOM_CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "edge-net",
    "plugins": [{
        "type": "pycni-macvlan", "master": "eth1", "mode": "bridge",
        "ipam": {"type": "pycni-host-local", "ranges": [[{"subnet": "192.168.50.0/24"}]]},
    }],
}
EXTRA_ENV = [{"name": "HTTPS_PROXY", "value": "http://proxy.example:3128"},
             {"name": "PYCNI_FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
EXTRA_TOLERATION = {"key": "dedicated", "operator": "Equal", "value": "net", "effect": "NoSchedule"}

# name -> values overriding the defaults
COMBOS: Dict[str, Dict[str, Any]] = {
    "defaults": {},
    "api-watch-off": {"apiWatch": False, "nodeCheck": {"enabled": False}},
    "api-watch-off-agent-off": {"apiWatch": False, "agent": {"enabled": False}},
    "server-off": {"server": {"enabled": False}},
    "agent-off": {"agent": {"enabled": False}},
    "server-and-agent-off": {"server": {"enabled": False}, "agent": {"enabled": False}},
    "server-unprivileged": {"server": {"privileged": False, "maxWorkers": 8, "idleWorkers": 0, "requestsPerWorker": 5,
                                       "runTimeoutSeconds": 9},
                            "seLinux": {"enabled": True}},
    "server-privileged": {"server": {"privileged": True, "idleWorkers": 5}},
    "vxlan": {"network": {"backend": "vxlan", "vxlan": {"vni": 42, "mtu": 1400, "port": 4789},
                          "clusterCIDRs": ["10.244.0.0/16", "fd00:10:244::/48"], "masquerade": False},
              "agent": {"healthPort": 19766}, "hostPaths": {"cniBinDir": "/home/kubernetes/bin"}},
    "exclusive": {"exclusive": True, "resyncSeconds": 15},
    "scheduling": {"tolerateAllTaints": False, "tolerations": [EXTRA_TOLERATION],
                   "nodeSelector": {"pool": "edge"}},
    "custom-conflist": {"conflist": CUSTOM_CONFLIST, "confName": "05-edge.conflist", "mtu": 9000},
    "api-server-and-extra-env": {"kubernetes": {"apiServer": {"host": "192.168.1.10", "port": 6443}},
                                 "extraEnv": EXTRA_ENV},
    "api-server-default-port": {"kubernetes": {"apiServer": {"host": "k8s-api.example"}}},
    "dns-on": {"dns": {"enabled": True, "config": {"domainName": "pods.example"}}},
    "masquerade-by-bridge": {"network": {"masquerade": False},
                             "conflist": {"plugins": [{"type": "pycni-bridge", "ipMasq": True,
                                                       "ipam": {"type": "pycni-host-local",
                                                                "ranges": "__POD_CIDR_RANGES__"}}]}},
    "netns-propagation-none": {"server": {"netnsPropagation": "None"}},
    "hardening-knobs": {"seLinux": {"enabled": True}, "capabilities": {"add": ["DAC_OVERRIDE"]},
                        "image": {"repository": "registry.example/pycni", "tag": "dev",
                                  "pullPolicy": "Always"},
                        "fullnameOverride": "netinst", "healthPort": 19765},
}


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm binary installed (and cached) by tools/install-helm.sh."""
    proc = subprocess.run(["bash", str(ROOT / "tools" / "install-helm.sh")], env=dict(os.environ, PYTHON=sys.executable),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 0, f"tools/install-helm.sh failed:\n{proc.stderr}"
    path = proc.stdout.strip().splitlines()[-1]
    assert Path(path).is_file(), path
    return path


@pytest.fixture(scope="session")
def k8s_versions(helm: str) -> List[str]:
    """Kubernetes 1.30 and the newest version kubernetes-validate ships schemas for
    (kubernetes-validate is in the test extras)."""
    from kubernetes_validate import utils
    newest = utils.latest_version()
    assert utils.Version(newest) > utils.Version(OLDEST_K8S)
    return [OLDEST_K8S, newest]


def _values_args(values: Dict[str, Any], tmp_path: Path) -> List[str]:
    if not values:
        return []
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["-f", str(path)]


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def template(helm: str, *args: str, chart: Path = CHART) -> subprocess.CompletedProcess:
    return run(helm, "template", "pycni", str(chart), "--namespace", NAMESPACE, *args)


def render(helm: str, values_args: Sequence[str] = (), chart: Path = CHART) -> str:
    proc = template(helm, *values_args, chart=chart)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def objects(text: str) -> List[Dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: List[Dict[str, Any]], kind: str) -> List[Dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def kube_validate(path: Path, versions: Sequence[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet"]
    for version in versions:
        cmd += ["-k", version]
    return subprocess.run(cmd + [str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def assert_valid(text: str, tmp_path: Path, versions: Sequence[str]) -> None:
    path = tmp_path / "rendered.yaml"
    path.write_text(text)
    proc = kube_validate(path, versions)
    assert proc.returncode == 0, proc.stdout
    assert "ERROR" not in proc.stdout, proc.stdout


def env_of(container: Dict[str, Any]) -> Dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def enabled(values: Dict[str, Any], part: str) -> bool:
    """server.enabled / agent.enabled (both default true)."""
    return values.get(part, {}).get("enabled", True)


def containers_of(docs: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    (ds,) = by_kind(docs, "DaemonSet")
    return {c["name"]: c for c in ds["spec"]["template"]["spec"]["containers"]}


def check_api_env(env: Dict[str, Any], values: Dict[str, Any]) -> None:
    """kubernetes.apiServer becomes KUBERNETES_SERVICE_HOST/PORT (else the kubelet's Service
    values stay); extraEnv entries come last, as given."""
    api = values.get("kubernetes", {}).get("apiServer", {})
    if api.get("host"):
        assert env["KUBERNETES_SERVICE_HOST"] == api["host"]
        assert env["KUBERNETES_SERVICE_PORT"] == str(api.get("port") or 6443)
    else:
        assert not API_ENV & set(env)
    for entry in values.get("extraEnv", []):
        assert env[entry["name"]] == entry.get("value", entry.get("valueFrom"))


def check_daemonset(docs: List[Dict[str, Any]], values: Dict[str, Any]) -> None:
    """The DaemonSet conventions of every CNI installer, and the installer's interface."""
    (ds,) = by_kind(docs, "DaemonSet")
    (cm,) = by_kind(docs, "ConfigMap")
    pod = ds["spec"]["template"]["spec"]
    ctr = containers_of(docs)["installer"]
    env = env_of(ctr)
    port = values.get("healthPort", 9765)

    assert ds["metadata"]["namespace"] == NAMESPACE
    assert pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] == 0
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()

    mounts = {m["name"]: m for m in ctr["volumeMounts"]}
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v and v["name"] in mounts}
    bin_dir = values.get("hostPaths", {}).get("cniBinDir", "/opt/cni/bin")
    assert {host_paths[n]: mounts[n]["mountPath"] for n in host_paths if n != "host-root"} == {
        bin_dir: "/host/opt/cni/bin", "/etc/cni/net.d": "/host/etc/cni/net.d"}
    (config_vol,) = [v for v in pod["volumes"] if "configMap" in v]
    assert config_vol["configMap"]["name"] == cm["metadata"]["name"]
    assert mounts[config_vol["name"]]["mountPath"] == "/etc/pycni/config"
    assert "subPath" not in mounts[config_vol["name"]], "a subPath mount never updates"

    assert ctr["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    extra = {e["name"] for e in values.get("extraEnv", [])}
    assert set(env) <= INSTALLER_ENV | extra, set(env) - INSTALLER_ENV - extra
    check_api_env(env, values)
    assert env["PYCNI_HOST_BIN_DIR"] == values.get("hostPaths", {}).get("cniBinDir", "/opt/cni/bin")
    assert env["PYCNI_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["PYCNI_LISTEN"] == f"0.0.0.0:{port}"
    assert env["PYCNI_CONFIG_DIR"] == "/etc/pycni/config"
    assert env["PYCNI_CONFIG_KEY"] == "conflist.yaml"
    assert env["PYCNI_CONF_NAME"] == values.get("confName", "10-pycni.conflist")
    assert env["PYCNI_EXCLUSIVE"] == ("true" if values.get("exclusive") else "false")
    assert env["PYCNI_RESYNC_SECONDS"] == str(values.get("resyncSeconds", 60))
    assert env["PYCNI_MTU"] == str(values.get("mtu", 0))
    assert ctr["resources"]["requests"] and ctr["resources"]["limits"]["memory"]

    sc = ctr["securityContext"]
    assert sc["runAsUser"] == 0 and sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    node_check = values.get("nodeCheck", {}).get("enabled", True)
    wanted_caps = values.get("capabilities", {}).get("add", []) + (["SYS_CHROOT"] if node_check else [])
    assert sc["capabilities"].get("add", []) == wanted_caps
    for name in ("PYCNI_POD_NAME", "PYCNI_POD_NAMESPACE", "PYCNI_POD_UID"):
        assert "fieldRef" in env[name]
    # The node check: the host's / read-only at /host/root (and nothing else from the host).
    assert env["PYCNI_HOST_ROOT"] == ("/host/root" if node_check else "/")
    if node_check:
        assert host_paths.pop("host-root") == "/"
        root_mount = mounts["host-root"]
        assert (root_mount["mountPath"], root_mount["readOnly"], root_mount["mountPropagation"]) == (
            "/host/root", True, "None")
    else:
        assert "host-root" not in host_paths and "host-root" not in mounts
    assert ("seLinuxOptions" in sc) == values.get("seLinux", {}).get("enabled", False)
    writable = {m["mountPath"] for m in ctr["volumeMounts"] if not m.get("readOnly")}
    assert "/tmp" in writable

    assert sorted(containers_of(docs)) == sorted(
        ["installer"] + ["pycni-server"] * enabled(values, "server") + ["pycni-agent"] * enabled(values, "agent"))
    assert pod.get("hostPID", False) == enabled(values, "server")
    used = {m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
    assert used == {v["name"] for v in pod["volumes"]}, "every volume is mounted, every mount has a volume"
    for ctr in pod["containers"]:
        assert ctr["image"] == containers_of(docs)["installer"]["image"]
        sc = ctr["securityContext"]
        assert sc["runAsUser"] == 0 and sc["readOnlyRootFilesystem"] is True
        assert ctr["resources"]["requests"] and ctr["resources"]["limits"]["memory"]
        if not sc["privileged"]:
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            assert ("seLinuxOptions" in sc) == values.get("seLinux", {}).get("enabled", False)


def check_server(docs: List[Dict[str, Any]], values: Dict[str, Any]) -> None:
    """pycni-server: host paths at the same paths inside, netns mounts that see later netns, probes."""
    if not enabled(values, "server"):
        assert "pycni-server" not in containers_of(docs)
        return
    (ds,) = by_kind(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    ctr = containers_of(docs)["pycni-server"]
    server = values.get("server", {})
    assert ctr["command"] == ["pycni-server"] and "args" not in ctr
    privileged = server.get("privileged", False)
    env = env_of(ctr)
    extra = {e["name"] for e in values.get("extraEnv", [])}
    assert set(env) == SERVER_ENV | (set() if privileged else {"PYCNI_PROC_SYS"}) | extra
    for entry in values.get("extraEnv", []):
        assert env[entry["name"]] == entry.get("value", entry.get("valueFrom"))
    assert env["PYCNI_SERVER_SOCKET"] == "/run/pycni/server.sock"
    assert env["PYCNI_SERVER_MAX_WORKERS"] == str(server.get("maxWorkers", 0))  # 0: four per CPU
    assert env["PYCNI_SERVER_IDLE_WORKERS"] == str(server.get("idleWorkers", 2))
    assert env["PYCNI_SERVER_REQUESTS_PER_WORKER"] == str(server.get("requestsPerWorker", 100))
    assert env["PYCNI_SERVER_RUN_TIMEOUT"] == str(server.get("runTimeoutSeconds", 20))
    if not privileged:
        assert env["PYCNI_PROC_SYS"] + "/net" == PROC_SYS_NET
    probe = {"exec": {"command": ["pycni-server", "health"]}}
    assert probe.items() <= ctr["livenessProbe"].items() and probe.items() <= ctr["readinessProbe"].items()
    assert "ports" not in ctr

    volumes = {v["name"]: v for v in pod["volumes"]}
    bin_dir = values.get("hostPaths", {}).get("cniBinDir", "/opt/cni/bin")
    seen = {}
    for mount in ctr["volumeMounts"]:
        host = volumes[mount["name"]]["hostPath"]
        if mount["mountPath"] == PROC_SYS_NET:  # the exception: must exist, never created
            assert host == {"path": "/proc/sys/net", "type": "Directory"}
        else:
            # requests carry host paths: every other host dir is at the same path inside
            assert mount["mountPath"] == host["path"], mount
            assert host["type"] == "DirectoryOrCreate"
        seen[mount["mountPath"]] = (mount.get("readOnly", False), mount.get("mountPropagation"))
    # /run/netns once (/var/run is a symlink to /run): a second HostToContainer mount is a second
    # chance for the runtime to refuse a host whose mount is private.
    propagation = server.get("netnsPropagation", "HostToContainer")
    wanted = {
        "/run/pycni": (False, None),
        "/run/netns": (True, None if propagation == "None" else propagation),
        "/var/lib/cni": (False, None),
        bin_dir: (True, None),
    }
    if not privileged:
        wanted[PROC_SYS_NET] = (False, None)
    assert seen == wanted

    sc = ctr["securityContext"]
    if privileged:
        assert sc["privileged"] is True and "capabilities" not in sc
        assert "allowPrivilegeEscalation" not in sc  # the API rejects false with privileged
    else:
        assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"], "add": SERVER_CAPS}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["terminationGracePeriodSeconds"] >= 30


def check_agent(docs: List[Dict[str, Any]], values: Dict[str, Any]) -> None:
    """pycni-agent: its env interface, probes on agent.healthPort, NET_ADMIN + NET_RAW only, and
    network.yaml in the ConfigMap exactly when it runs (the installer's __MTU__ reads it)."""
    from pycni.installer.network import NetworkConfig, VxlanConfig, parse_network_config

    (cm,) = by_kind(docs, "ConfigMap")
    if not enabled(values, "agent"):
        assert "pycni-agent" not in containers_of(docs)
        assert "network.yaml" not in cm["data"]
        return
    ctr = containers_of(docs)["pycni-agent"]
    port = values.get("agent", {}).get("healthPort", 9766)
    assert ctr["command"] == ["pycni-agent"] and "args" not in ctr
    env = env_of(ctr)
    extra = {e["name"] for e in values.get("extraEnv", [])}
    assert set(env) <= AGENT_ENV | extra, set(env) - AGENT_ENV - extra
    check_api_env(env, values)
    node = {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["NODE_NAME"] == node and env["PYCNI_NODE_NAME"] == node
    assert env["PYCNI_CONFIGMAP"] == f"{NAMESPACE}/{cm['metadata']['name']}"
    assert env["PYCNI_AGENT_CONFIG_KEY"] == "network.yaml"
    assert env["PYCNI_AGENT_LISTEN"] == f"0.0.0.0:{port}"
    assert ctr["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert [p["containerPort"] for p in ctr["ports"]] == [port]
    sc = ctr["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"], "add": AGENT_CAPS}
    assert {m["mountPath"] for m in ctr["volumeMounts"]} == {"/tmp"}

    net = values.get("network", {})
    vx = net.get("vxlan", {})
    expected = NetworkConfig(
        backend=net.get("backend", "host-gw"),
        vxlan=VxlanConfig(vni=vx.get("vni", 1), port=vx.get("port", 8472), mtu=vx.get("mtu", 0),
                          device=vx.get("device", "pycni-vxlan")),
        resync_seconds=float(net.get("resyncSeconds", 30)), masquerade=net.get("masquerade", True),
        cluster_cidrs=tuple(net.get("clusterCIDRs", ())))
    assert parse_network_config(cm["data"]["network.yaml"]) == expected


def check_rbac(docs: List[Dict[str, Any]], values: Dict[str, Any]) -> None:
    """Least privilege: nodes (cluster-wide, read; patch only for the agent), the one ConfigMap
    (read; for the installer's API watch or the agent), Events (write)."""
    api_watch = values.get("apiWatch", True)
    agent = enabled(values, "agent")
    (cm,) = by_kind(docs, "ConfigMap")
    (sa,) = by_kind(docs, "ServiceAccount")
    (ds,) = by_kind(docs, "DaemonSet")
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    granted = set()
    for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    assert set(rule["verbs"]) <= ALLOWED_RULES[(group, resource)], rule
                    if resource == "configmaps":
                        assert role["kind"] == "Role"
                        assert rule["resourceNames"] == [cm["metadata"]["name"]]
                    if resource == "nodes":
                        assert ("patch" in rule["verbs"]) == agent, rule
                    granted.add((role["kind"], group, resource))
    expected = {("ClusterRole", "", "nodes"), ("Role", "", "events")}
    if api_watch or agent:
        expected.add(("Role", "", "configmaps"))
    assert granted == expected
    for binding in by_kind(docs, "ClusterRoleBinding") + by_kind(docs, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                        "namespace": NAMESPACE}]
    env = env_of(containers_of(docs)["installer"])
    if api_watch:
        assert env["PYCNI_CONFIGMAP"] == f"{NAMESPACE}/{cm['metadata']['name']}"
        assert env["PYCNI_WATCH_API"] == "true"
    else:
        assert "PYCNI_CONFIGMAP" not in env
        assert env["PYCNI_WATCH_API"] == "false"


@pytest.mark.parametrize("combo", sorted(COMBOS))
def test_chart_lint_render_validate(combo: str, helm: str, k8s_versions: List[str], tmp_path: Path) -> None:
    values = COMBOS[combo]
    args = _values_args(values, tmp_path)
    lint = run(helm, "lint", "--strict", str(CHART), *args)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    text = render(helm, args)
    assert_valid(text, tmp_path, k8s_versions)
    docs = objects(text)
    assert sorted(d["kind"] for d in docs) == sorted([
        "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "Role", "RoleBinding", "ServiceAccount"])
    check_daemonset(docs, values)
    check_server(docs, values)
    check_agent(docs, values)
    check_rbac(docs, values)

    (cm,) = by_kind(docs, "ConfigMap")
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    # Helm merges maps: a conflist passed in keeps the default's top-level keys it does not set.
    expected = {**defaults["conflist"], **values.get("conflist", {})}
    if values.get("dns", {}).get("enabled"):
        expected["plugins"] = expected["plugins"] + [{"type": "pycni-dns", **values["dns"].get("config", {})}]
    assert yaml.safe_load(cm["data"]["conflist.yaml"]) == expected

    pod = by_kind(docs, "DaemonSet")[0]["spec"]["template"]["spec"]
    if values.get("tolerateAllTaints", True):
        assert {"operator": "Exists"} in pod["tolerations"]
    else:
        assert all(t.get("operator") != "Exists" or "key" in t for t in pod["tolerations"])
    for toleration in values.get("tolerations", []):
        assert toleration in pod["tolerations"]
    # Helm merges maps: an extra nodeSelector adds to the default one.
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", **values.get("nodeSelector", {})}
    image = values.get("image")
    if image:
        for ctr in pod["containers"]:
            assert ctr["image"] == f"{image['repository']}:{image['tag']}"
            assert ctr["imagePullPolicy"] == image["pullPolicy"]


def test_default_conflist_shape(helm: str) -> None:
    """What a Kubernetes node needs: pycni-bridge on cni0 with pycni-host-local over the node's
    podCIDRs; no pycni-dns (the kubelet ignores CNI DNS results); no per-pod masquerade (the
    agent's network.masquerade is the one owner)."""
    docs = objects(render(helm))
    (cm,) = by_kind(docs, "ConfigMap")
    conf = yaml.safe_load(cm["data"]["conflist.yaml"])
    (bridge,) = conf["plugins"]
    assert (bridge["type"], bridge["bridge"], bridge["isGateway"], bridge["ipMasq"]) == (
        "pycni-bridge", "cni0", True, False)
    assert bridge["ipam"] == {"type": "pycni-host-local", "ranges": "__POD_CIDR_RANGES__"}
    assert yaml.safe_load(cm["data"]["network.yaml"])["masquerade"] is True
    with_dns = yaml.safe_load(by_kind(objects(render(helm, ["--set", "dns.enabled=true"])), "ConfigMap")[0]
                              ["data"]["conflist.yaml"])
    assert [p["type"] for p in with_dns["plugins"]] == ["pycni-bridge", "pycni-dns"]


@pytest.mark.parametrize("values", [
    {"conflist": {"plugins": [{"type": "pycni-bridge", "ipMasq": True}]}},
    {"conflist": {"plugins": [{"type": "pycni-macvlan"}, {"type": "pycni-bridge", "ipMasq": True}]},
     "network": {"masquerade": True}},
], ids=["bridge-and-agent", "second-plugin"])
def test_masquerade_has_one_owner(values: Dict[str, Any], helm: str, tmp_path: Path) -> None:
    """ipMasq on a plugin while the agent masquerades: the chart refuses to render, naming both."""
    proc = template(helm, *_values_args(values, tmp_path))
    assert proc.returncode != 0
    assert "ipMasq" in proc.stderr and "network.masquerade" in proc.stderr, proc.stderr
    off = _deep_merge(values, {"agent": {"enabled": False}})
    assert template(helm, *_values_args(off, tmp_path)).returncode == 0, "no agent: the bridge may own it"


def test_network_defaults_mirror_the_agent() -> None:
    """values.yaml `network`, the schema's defaults and pycni.installer.network agree on every default."""
    from pycni.installer.network import NetworkConfig
    from pycni.agent.settings import parse as parse_agent_settings

    values = yaml.safe_load((CHART / "values.yaml").read_text())["network"]
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["network"]["properties"]
    config = NetworkConfig()
    resync = parse_agent_settings([], {"NODE_NAME": "n"}).resync_seconds
    agent_defaults = {"backend": config.backend, "vxlan": dict(config.vxlan.__dict__), "resyncSeconds": resync,
                      "masquerade": config.masquerade, "clusterCIDRs": list(config.cluster_cidrs)}
    assert values == agent_defaults
    schema_defaults = {k: v["default"] for k, v in schema.items() if k != "vxlan"}
    schema_defaults["vxlan"] = {k: v["default"] for k, v in schema["vxlan"]["properties"].items()}
    assert schema_defaults == agent_defaults


def _deep_merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = _deep_merge(base[key], value) if nested else value
    return out


NETWORK_CASES = [  # (network values, accepted)
    ({"backend": "vxlan"}, True), ({"backend": "gre"}, False),
    ({"vxlan": {"vni": 16777215}}, True), ({"vxlan": {"vni": 0}}, False), ({"vxlan": {"vni": 16777216}}, False),
    ({"vxlan": {"mtu": 0}}, True), ({"vxlan": {"mtu": 576}}, True), ({"vxlan": {"mtu": 575}}, False),
    ({"vxlan": {"port": 4789}}, True), ({"vxlan": {"port": 0}}, False),
    ({"vxlan": {"device": "flannel.1"}}, True), ({"vxlan": {"device": "sixteen-chars-xx"}}, False),
    ({"vxlan": {"device": "has space"}}, False), ({"vxlan": {"nosuch": 1}}, False),
    ({"resyncSeconds": 0.5}, True), ({"resyncSeconds": 0}, False),
    ({"masquerade": False}, True), ({"masquerade": "yes"}, False),
    ({"clusterCIDRs": ["10.244.0.0/16", "fd00::/48"]}, True), ({"clusterCIDRs": ["banana"]}, False),
    ({"nosuch": 1}, False),
]


@pytest.mark.parametrize("case,accepted", NETWORK_CASES, ids=[json.dumps(c[0]) for c in NETWORK_CASES])
def test_network_schema_agrees_with_the_agent(case: Dict[str, Any], accepted: bool, helm: str,
                                              tmp_path: Path) -> None:
    """A `network` value the schema takes is one the agent takes, and the other way round."""
    from pycni.installer.network import ConfigError, parse_network_config

    proc = template(helm, *_values_args({"network": case}, tmp_path))
    assert (proc.returncode == 0) == accepted, proc.stderr
    if not accepted:
        assert "schema" in proc.stderr, proc.stderr
    merged = _deep_merge(yaml.safe_load((CHART / "values.yaml").read_text())["network"], case)
    try:
        parse_network_config(yaml.safe_dump(merged))
        agent_accepts = True
    except ConfigError:
        agent_accepts = False
    assert agent_accepts == accepted


@pytest.mark.parametrize("bad", [
    ["--set", "resyncSeconds=0"],
    ["--set", "confName=pycni.txt"],
    ["--set", "apiWatch=maybe"],
    ["--set", "nosuchkey=1"],
    ["--set-json", 'conflist={"cniVersion":"1.0.0","name":"x","plugins":[]}'],
    ["--set", "image.pullPolicy=Sometimes"],
    ["--set", "server.enabled=maybe"],
    ["--set", "server.maxWorkers=-1"],
    ["--set", "server.requestsPerWorker=0"],
    ["--set", "server.idleWorkers=-1"],
    ["--set", "agent.healthPort=0"],
    ["--set", "agent.nosuchkey=1"],
])
def test_schema_rejects_bad_values(bad: List[str], helm: str) -> None:
    proc = template(helm, *bad)
    assert proc.returncode != 0
    assert "schema" in proc.stderr, proc.stderr


def test_strict_validation_catches_a_typo(helm: str, k8s_versions: List[str], tmp_path: Path) -> None:
    """Negative control: the validation step really rejects an unknown field."""
    text = render(helm).replace("hostNetwork: true", "hostNetwork: true\n      hostNetwrok: true", 1)
    path = tmp_path / "typo.yaml"
    path.write_text(text)
    proc = kube_validate(path, k8s_versions)
    assert proc.returncode != 0 and "hostNetwrok" in proc.stdout


def install_notes(helm: str, tmp_path: Path, value: str) -> str:
    """The NOTES a `helm install --dry-run` with `--set value` prints (no cluster needed)."""
    proc = subprocess.run(
        [helm, "install", "pycni", str(CHART), "--namespace", NAMESPACE, "--dry-run=client", "--set", value],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "none")},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("NOTES:", 1)[1]


@pytest.mark.parametrize("api_watch", [True, False])
def test_notes_tell_how_to_check_and_edit(api_watch: bool, helm: str, tmp_path: Path) -> None:
    notes = install_notes(helm, tmp_path, f"apiWatch={str(api_watch).lower()}")
    assert "rollout status daemonset/pycni" in notes
    assert "/readyz" in notes
    assert "edit configmap pycni-config" in notes
    assert ("get events" in notes) == api_watch
    assert ("within seconds" in notes) == api_watch
    assert "pycni-server health" in notes and "-c pycni-agent" in notes


def test_notes_without_server_and_agent(helm: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [helm, "install", "pycni", str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
         "--set", "server.enabled=false", "--set", "agent.enabled=false"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "none")},
    )
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "pycni-server" not in notes and "pycni-agent" not in notes


def _render_manifest_module():
    spec = importlib.util.spec_from_file_location("render_manifest", ROOT / "tools" / "render-manifest.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_manifest_is_up_to_date(helm: str) -> None:
    """charts/pycni.yaml must equal the chart rendered with default values."""
    module = _render_manifest_module()
    assert MANIFEST.read_text() == module.render(helm), (
        "charts/pycni.yaml is out of date: run python3 tools/render-manifest.py")
    check = subprocess.run([sys.executable, str(ROOT / "tools" / "render-manifest.py"), "--check"],
                           env={"PATH": "/usr/bin:/bin", "HELM": helm},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert check.returncode == 0, check.stderr


def test_manifest_check_notices_a_chart_change(helm: str, tmp_path: Path) -> None:
    """Negative control: a changed default changes the rendered manifest."""
    module = _render_manifest_module()
    chart = tmp_path / "pycni"
    shutil.copytree(CHART, chart)
    values = chart / "values.yaml"
    values.write_text(values.read_text().replace("resyncSeconds: 60", "resyncSeconds: 61"))
    module.CHART = chart
    assert module.render(helm) != MANIFEST.read_text()


def test_manifest_validates(k8s_versions: List[str], tmp_path: Path) -> None:
    proc = kube_validate(MANIFEST, k8s_versions)
    assert proc.returncode == 0, proc.stdout
    docs = objects(MANIFEST.read_text())
    check_daemonset(docs, {})
    check_server(docs, {})
    check_agent(docs, {})
    check_rbac(docs, {})
    assert {d["metadata"].get("namespace", NAMESPACE) for d in docs} == {NAMESPACE}


SAMPLE_NODES = {
    "dual-stack": ["10.244.3.0/24", "fd00:10:244:3::/64"],
    "ipv4-only": ["10.244.7.0/24"],
}


@pytest.mark.parametrize("node", sorted(SAMPLE_NODES))
def test_default_conflist_passes_installer_validation(node: str, helm: str, bin_dir: Path) -> None:
    """The chart's default conflist, rendered for a sample node, is what the installer would write."""
    from pycni.installer.render import NodeFacts, parse_template
    from pycni.installer.render import render as render_conflist
    from pycni.installer.validate import validate

    (cm,) = by_kind(objects(render(helm)), "ConfigMap")
    template = parse_template(cm["data"]["conflist.yaml"])
    facts = NodeFacts(name="node-" + node, pod_cidrs=SAMPLE_NODES[node], mtu=1450)
    conflist = validate(render_conflist(template, facts), bin_dir)
    bridge = conflist["plugins"][0]
    assert bridge["mtu"] == 1450
    assert bridge["ipam"]["ranges"] == [[{"subnet": cidr}] for cidr in SAMPLE_NODES[node]]


def test_installer_validation_rejects_a_broken_chart_conflist(helm: str, bin_dir: Path,
                                                              tmp_path: Path) -> None:
    """Negative control: a conflist naming a plugin that is not installed fails the same check."""
    from pycni.installer.render import NodeFacts, parse_template
    from pycni.installer.render import render as render_conflist
    from pycni.installer.validate import ValidationError, validate

    broken = {"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "pycni-nosuch"}]}
    text = render(helm, _values_args({"conflist": broken}, tmp_path))
    (cm,) = by_kind(objects(text), "ConfigMap")
    rendered = render_conflist(parse_template(cm["data"]["conflist.yaml"]),
                               NodeFacts(name="n", pod_cidrs=["10.0.0.0/24"], mtu=1500))
    with pytest.raises(ValidationError):
        validate(rendered, bin_dir)


def test_uninstall_mode(helm: str, k8s_versions: List[str], tmp_path: Path) -> None:
    """uninstall: true replaces every container with one that runs `pycni-agent cleanup`, then
    `pycni-installer uninstall --node --idle`, Ready once its marker exists; it sees the host paths the cleanup works on, at the paths
    the installer and the conflist name, and nothing else runs on the node."""
    text = render(helm, ["--set", "uninstall=true"])
    assert_valid(text, tmp_path, k8s_versions)
    docs = objects(text)
    (ds,) = by_kind(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    assert ctr["command"] == ["sh", "-c", "pycni-agent cleanup && exec pycni-installer uninstall --node --idle"]
    env = env_of(ctr)
    assert env["PYCNI_BIN_DIR"] == "/host/opt/cni/bin" and env["PYCNI_CONF_DIR"] == "/host/etc/cni/net.d"
    assert ctr["readinessProbe"]["exec"]["command"] == ["cat", "/tmp/pycni-uninstalled"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in ctr["volumeMounts"]}
    assert {p: v.get("hostPath", {}).get("path") for p, v in mounts.items()} == {
        "/host/opt/cni/bin": "/opt/cni/bin", "/host/etc/cni/net.d": "/etc/cni/net.d", "/tmp": None,
        "/var/lib/cni": "/var/lib/cni", "/run/pycni": "/run/pycni"}
    assert pod["hostNetwork"] is True and pod["hostPID"] is True  # the agent's state; DNS servers' pids
    sc = ctr["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]} and sc["privileged"] is False
    # the same objects as the install: applying it over the install rolls every node to the cleanup
    installed = objects(render(helm))
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in installed)


def test_uninstall_manifest_is_up_to_date(helm: str) -> None:
    module = _render_manifest_module()
    assert module.UNINSTALL_MANIFEST.read_text() == module.render(helm, module.UNINSTALL_VALUES), (
        "charts/pycni-uninstall.yaml is out of date: run python3 tools/render-manifest.py")


@pytest.mark.parametrize("uninstall", [False, True])
def test_notes_tell_how_to_uninstall(uninstall: bool, helm: str, tmp_path: Path) -> None:
    """The install's notes say that `helm uninstall` alone leaves the nodes as they are and how to
    clean them; the uninstall mode's notes say how to wait for it, then remove the release."""
    notes = install_notes(helm, tmp_path, f"uninstall={str(uninstall).lower()}")
    if uninstall:
        assert "REMOVED" in notes and "rollout status daemonset/pycni" in notes and "-c uninstall" in notes
        assert "helm uninstall pycni -n kube-system" in notes and "edit configmap" not in notes
    else:
        assert "--set uninstall=true" in notes and "helm uninstall alone leaves" in notes
