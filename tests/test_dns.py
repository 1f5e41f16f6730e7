"""pycni-dns with real namespaces: reference bridge + host-local wire containers, our zipapp is chained
after them, and containers query the network's server with dig from inside their namespaces."""
from __future__ import annotations

import concurrent.futures
import os
import shutil
import struct
import time
import random
import signal
import socket
import threading
from pathlib import Path
from typing import Iterator

import pytest

from dns_helpers import (
    DnsNetwork, Upstream, alive, dig, dnsperf, free_subnet, kill_servers, outsider, random_frames,
    server_pids, server_processes, tcp_frame, udp_query, wait_until, worker_pids,
)
from helpers import in_netns, log_events, netns_path, stat_fields, unique

pytestmark = pytest.mark.kernel

DOMAIN = "dns.pycni"


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "dns-state"
    yield path
    kill_servers(path)  # even when the test failed half-way


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.close()


@pytest.fixture
def make_network(bin_dir, state_dir, make_netns, tmp_path, upstream):
    made = []

    def make() -> DnsNetwork:
        net = DnsNetwork(bin_dir, state_dir, make_netns, tmp_path / f"ipam{len(made)}", [upstream.address])
        made.append(net)
        return net

    yield make
    for net in made:
        net.teardown()


def test_containers_resolve_each_other(make_network):
    net = make_network()
    a = net.attach("alpha", "team")
    b = net.attach("bravo", "team", aliases=["db", "cache.internal"])
    c = net.attach("charlie", aliases={net.name: ["web"], "othernet": ["notme"]})  # podman's map form
    gw = net.gateway

    assert a.result["dns"]["nameservers"][0] == gw
    assert DOMAIN in a.result["dns"]["search"]
    assert a.result["ips"] and a.result["interfaces"]  # prevResult passed through

    for tcp in (False, True):
        for name in (f"bravo.{DOMAIN}", f"bravo.team.{DOMAIN}", f"db.{DOMAIN}", f"cache.internal.{DOMAIN}"):
            status, answers, flags = dig(a.netns, gw, name, tcp=tcp)
            assert (status, answers) == ("NOERROR", [b.ip]), (name, tcp)
            assert "aa" in flags.split()
        for name in ("bravo", "bravo.team", "cache.internal"):  # outside the domain: never ours
            status, answers, flags = dig(a.netns, gw, name, tcp=tcp)
            assert (status, "aa" in flags.split()) == ("NXDOMAIN", False), (name, tcp)
        assert dig(b.netns, gw, f"web.{DOMAIN}", tcp=tcp)[:2] == ("NOERROR", [c.ip])
    assert dig(a.netns, gw, "notme")[0] == "NXDOMAIN"  # not ours: forwarded, the upstream says so
    assert dig(a.netns, gw, f"notme.{DOMAIN}")[0] == "NXDOMAIN"
    # PTR, over UDP and TCP: the newest owner's first name, fully qualified
    assert dig(a.netns, gw, b.ip, "PTR")[:2] == ("NOERROR", [f"bravo.{DOMAIN}.", f"bravo.team.{DOMAIN}.",
                                                            f"db.{DOMAIN}.", f"cache.internal.{DOMAIN}."])
    assert dig(a.netns, gw, c.ip, "PTR", tcp=True)[1][0] == f"charlie.{DOMAIN}."
    # a name with only IPv4 has no AAAA: NODATA, not NXDOMAIN
    assert dig(a.netns, gw, f"bravo.{DOMAIN}", "AAAA")[:2] == ("NOERROR", [])
    status, answers, flags = dig(a.netns, gw, f"nobody.{DOMAIN}")
    assert status == "NXDOMAIN" and "aa" in flags.split()


def test_forwarding_and_check(make_network, upstream):
    net = make_network()
    a = net.attach("alpha")
    for tcp in (False, True):
        status, answers, flags = dig(a.netns, net.gateway, "www.example.test", tcp=tcp)
        assert (status, answers) == ("NOERROR", ["192.0.2.77"])
        assert "aa" not in flags.split(), "forwarded answers must not be marked authoritative"
    assert dig(a.netns, net.gateway, "missing.invalid")[0] == "NXDOMAIN"  # the upstream's answer
    assert upstream.queries >= 3
    # CHECK and STATUS while all is well
    out, rc, err = net.dns("CHECK", a.container_id, netns_path(a.netns), a.args, a.result)
    assert rc == 0, (out, err)
    out, rc, err = net.dns("STATUS", "", cniVersion="1.1.0")
    assert rc == 0, (out, err)


def test_del_removes_names_and_last_del_stops_server(make_network, state_dir):
    net = make_network()
    a = net.attach("alpha")
    b = net.attach("bravo", aliases=["bee"])
    pid = net.pid()
    assert pid and alive(pid)
    net.detach(b)
    assert dig(a.netns, net.gateway, f"bravo.{DOMAIN}")[0] == "NXDOMAIN"
    assert dig(a.netns, net.gateway, f"bee.{DOMAIN}")[0] == "NXDOMAIN"
    assert dig(a.netns, net.gateway, f"alpha.{DOMAIN}")[1] == [a.ip]
    # the runtime's second DEL: no netns, no prevResult; must succeed and change nothing
    out, rc, err = net.dns("DEL", b.container_id, args=b.args)
    assert rc == 0, (out, err)
    assert net.pid() == pid and alive(pid)
    net.detach(a, with_prev=False)  # the last one: the server goes away, pidfile too
    assert wait_until(lambda: not alive(pid), 3)
    assert not (state_dir / net.name / "server.pid").exists()
    assert not (state_dir / net.name / "records.json").exists()
    assert server_pids(state_dir) == []
    out, rc, err = net.dns("DEL", a.container_id)  # and DEL again is still fine
    assert rc == 0, (out, err)


def test_server_is_detached_and_survives_the_plugin(make_network):
    net = make_network()
    a = net.attach("alpha")
    pid = net.pid()
    stat = stat_fields(pid)
    ppid, pgid, sid = int(stat[1]), int(stat[2]), int(stat[3])
    assert pgid != os.getpgid(0) and sid != os.getsid(0)
    assert sid != pid, "not a session leader (double fork): it can never get a controlling terminal"
    assert ppid != os.getpid()
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
    # the plugin process that started it has exited long ago; the server still answers
    assert dig(a.netns, net.gateway, f"alpha.{DOMAIN}")[1] == [a.ip]


def test_two_networks_two_isolated_servers(make_network):
    one, two = make_network(), make_network()
    a1 = one.attach("alpha")
    b1 = one.attach("bravo")
    a2 = two.attach("xray")
    assert one.pid() != two.pid() and alive(one.pid()) and alive(two.pid())
    assert dig(a1.netns, one.gateway, f"bravo.{DOMAIN}")[1] == [b1.ip]
    assert dig(a1.netns, one.gateway, f"xray.{DOMAIN}")[0] == "NXDOMAIN"
    assert dig(a2.netns, two.gateway, f"alpha.{DOMAIN}")[0] == "NXDOMAIN"
    assert dig(a2.netns, two.gateway, f"xray.{DOMAIN}")[1] == [a2.ip]
    # removing the last container of one network leaves the other's server alone
    pid_two = two.pid()
    two.detach(a2)
    assert wait_until(lambda: not alive(pid_two), 3)
    assert alive(one.pid()) and dig(a1.netns, one.gateway, f"alpha.{DOMAIN}")[1] == [a1.ip]


def _fake_prev(net: DnsNetwork, index: int) -> dict:
    ip = net.subnet.network_address + 100 + index
    return {"cniVersion": "1.0.0",
            "interfaces": [{"name": net.bridge}, {"name": "eth0", "sandbox": "/var/run/netns/fake"}],
            "ips": [{"address": f"{ip}/24", "gateway": net.gateway, "interface": 1}]}


def test_fifty_concurrent_adds_all_resolvable(make_network, state_dir):
    net = make_network()
    a = net.attach("alpha")
    names = [f"pod{i}" for i in range(50)]

    def add(i: int):
        return net.dns("ADD", f"cc{i}", netns_path(a.netns), f"K8S_POD_NAME={names[i]};K8S_POD_NAMESPACE=load",
                       _fake_prev(net, i))

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(add, range(50)))
    assert all(rc == 0 for _, rc, _ in results), [r for r in results if r[1]]
    assert len(server_pids(state_dir)) == 1, "one server per network, however many ADDs race"
    for i, name in enumerate(names):
        want = str(net.subnet.network_address + 100 + i)
        reply = udp_query(net.gateway, 53, f"{name}.load.{DOMAIN}")
        assert [str(rr.rdata) for rr in reply.rr] == [want], name
    assert dig(a.netns, net.gateway, f"pod49.{DOMAIN}", tcp=True)[1] == [str(net.subnet.network_address + 149)]

    def delete(i: int):
        return net.dns("DEL", f"cc{i}", args=f"K8S_POD_NAME={names[i]}")

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        assert all(rc == 0 for _, rc, _ in pool.map(delete, range(50)))
    assert dig(a.netns, net.gateway, f"pod7.{DOMAIN}")[0] == "NXDOMAIN"
    assert dig(a.netns, net.gateway, f"alpha.{DOMAIN}")[1] == [a.ip]


def test_random_bytes_do_not_kill_it(make_network):
    net = make_network()
    a = net.attach("alpha")
    pid = net.pid()
    frames = random_frames(4000, seed=random.randrange(1 << 30))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i, frame in enumerate(frames):
            s.sendto(frame, (net.gateway, 53))
            if i % 200 == 0:  # keep the kernel's receive queue from simply dropping most of them
                threading.Event().wait(0.005)
    for i, frame in enumerate(frames[:300]):
        try:
            with socket.create_connection((net.gateway, 53), timeout=2) as c:
                c.sendall(tcp_frame(frame, honest=i % 2 == 0))
                if i % 10 == 0:
                    c.shutdown(socket.SHUT_WR)
                    c.settimeout(2)
                    try:
                        c.recv(4096)
                    except OSError:
                        pass
        except OSError:
            pass
    # a truncated header and a response packet: FORMERR or silence, never a crash
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff", (net.gateway, 53))
        reply = s.recv(512)
        assert reply[:2] == b"\x12\x34" and reply[3] & 0x0F == 1  # FORMERR with our ID
    assert net.pid() == pid and alive(pid)
    assert dig(a.netns, net.gateway, f"alpha.{DOMAIN}")[1] == [a.ip]
    assert dig(a.netns, net.gateway, f"alpha.{DOMAIN}", tcp=True)[1] == [a.ip]


def test_same_name_newest_wins_and_the_previous_owner_gets_it_back(make_network):
    net = make_network()
    old = net.attach("web")
    new = net.attach("web")
    probe = net.attach("probe")
    assert dig(probe.netns, net.gateway, f"web.{DOMAIN}")[1] == [new.ip]
    net.detach(new)  # the newest owner leaves: the previous live owner answers again
    assert dig(probe.netns, net.gateway, f"web.{DOMAIN}")[1] == [old.ip]
    assert dig(probe.netns, net.gateway, old.ip, "PTR")[1] == [f"web.{DOMAIN}."]
    newest = net.attach("web")
    net.detach(old)  # an older owner's DEL must not remove the newer owner's name
    assert dig(probe.netns, net.gateway, f"web.{DOMAIN}")[1] == [newest.ip]
    net.detach(newest)
    assert dig(probe.netns, net.gateway, f"web.{DOMAIN}")[0] == "NXDOMAIN"


def test_no_nxdomain_window_while_records_change(make_network):
    net = make_network()
    a = net.attach("alpha")
    stop = threading.Event()
    bad = []

    def hammer():
        while not stop.is_set():
            try:
                reply = udp_query(net.gateway, 53, f"alpha.{DOMAIN}", timeout=2)
                if [str(rr.rdata) for rr in reply.rr] != [a.ip]:
                    bad.append(reply.header.rcode)
            except OSError as exc:
                bad.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(15):
            out, rc, err = net.dns("ADD", f"churn{i}", netns_path(a.netns), f"K8S_POD_NAME=churn{i}",
                                   _fake_prev(net, i))
            assert rc == 0, (out, err)
            assert udp_query(net.gateway, 53, f"churn{i}.{DOMAIN}").rr, "visible as soon as ADD returned"
            if i % 2:
                assert net.dns("DEL", f"churn{i}")[1] == 0
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert bad == []


def test_dead_server_status_and_stale_pidfile(make_network, state_dir):
    net = make_network()
    a = net.attach("alpha")
    pid = net.pid()
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not alive(pid), 3)
    out, rc, err = net.dns("STATUS", "", cniVersion="1.1.0")
    assert rc == 1 and out["code"] == 50, (out, err)
    out, rc, err = net.dns("CHECK", a.container_id, netns_path(a.netns), a.args, a.result)
    assert rc == 1 and out["code"] == 50, (out, err)
    # a pidfile naming a live process that is not our server is stale too
    (state_dir / net.name / "server.pid").write_text(f"{os.getpid()}\n")
    b = net.attach("bravo")
    new_pid = net.pid()
    assert new_pid not in (pid, os.getpid()) and alive(new_pid)
    assert dig(b.netns, net.gateway, f"alpha.{DOMAIN}")[1] == [a.ip]  # records survived the crash
    assert net.dns("STATUS", "", cniVersion="1.1.0")[1] == 0


def test_gc_drops_stale_attachments(make_network):
    net = make_network()
    a = net.attach("alpha")
    net.attach("bravo")
    valid = [{"containerID": a.container_id, "ifname": "eth0"}]
    out, rc, err = net.dns("GC", "", cniVersion="1.1.0", **{"cni.dev/valid-attachments": valid})
    assert rc == 0, (out, err)
    assert dig(a.netns, net.gateway, f"bravo.{DOMAIN}")[0] == "NXDOMAIN"
    assert dig(a.netns, net.gateway, f"alpha.{DOMAIN}")[1] == [a.ip]
    pid = net.pid()
    out, rc, err = net.dns("GC", "", cniVersion="1.1.0", **{"cni.dev/valid-attachments": []})
    assert rc == 0, (out, err)
    assert wait_until(lambda: not alive(pid), 3)


def test_config_errors(make_network, state_dir, tmp_path):
    net = make_network()
    cid = "cfg1"
    ns = net.make_netns("dns")
    # ADD without prevResult
    out, rc, _ = net.dns("ADD", cid, netns_path(ns), "K8S_POD_NAME=x")
    assert rc == 1 and out["code"] == 7 and "prevResult" in out["msg"]
    # network names that would escape the state dir
    for bad in ("../escape", "a/b", ".."):
        env_out, rc, _ = net.dns("ADD", cid, netns_path(ns), "K8S_POD_NAME=x", _fake_prev(net, 1), name=bad)
        assert rc == 1 and env_out["code"] == 7, bad
    assert not (tmp_path / "escape").exists()
    for key, value in (("domainName", "bad domain"), ("upstreams", ["not-an-ip"]), ("listenAddresses", "1.2.3.4"),
                       ("port", 0), ("stateDir", "relative/dir"), ("ttl", -1)):
        out, rc, _ = net.dns("ADD", cid, netns_path(ns), "K8S_POD_NAME=x", _fake_prev(net, 1), **{key: value})
        assert rc == 1 and out["code"] == 7 and key in out["msg"], (key, out)
    out, rc, _ = net.dns("ADD", cid, netns_path(ns), "K8S_POD_NAME=x", _fake_prev(net, 1), aliases=["bad name!"])
    assert rc == 1 and out["code"] == 7
    assert not (state_dir / net.name / "records.json").exists()
    # DEL and STATUS of a network that never had records
    assert net.dns("DEL", cid)[1] == 0
    assert net.dns("STATUS", "", cniVersion="1.1.0")[1] == 0


@pytest.mark.parametrize("reuseport", [False, True], ids=["plain", "SO_REUSEPORT"])
def test_address_in_use_fails_add_cleanly(make_network, state_dir, reuseport):
    """A port someone holds fails the start, even when the holder allows SO_REUSEPORT (our workers
    share the port that way: a second server must never silently join them)."""
    net = make_network()
    ns = net.make_netns("dns")
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if reuseport:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    blocker.bind(("127.0.0.1", 0))
    port = blocker.getsockname()[1]
    try:
        out, rc, err = net.dns("ADD", "busy1", netns_path(ns), "K8S_POD_NAME=x", _fake_prev(net, 1),
                               listenAddresses=["127.0.0.1"], port=port, serverProcesses=2)
        assert rc == 1 and "did not start" in out["msg"] and "bind" in out["msg"], (out, err)
        assert not (state_dir / net.name / "records.json").exists()
        assert server_pids(state_dir) == []
    finally:
        blocker.close()


def test_subnet_helper_sanity():
    assert free_subnet().prefixlen == 24


def test_server_starts_from_a_zipapp_run_without_a_usable_cache(make_network, tmp_path, monkeypatch):
    """Untrusted cache dir: the plugin imports from its archive pinned on /proc/self/fd/9, a path
    that means nothing in the server process it starts; the server must get the archive's own path."""
    cache = tmp_path / "shared-cache"
    cache.mkdir()
    cache.chmod(0o777)  # writable by anyone: never used
    monkeypatch.setenv("PYCNI_CACHE_DIR", str(cache))
    monkeypatch.setenv("PYCNI_SERVER_SOCKET", "off")  # in-process, where the archive path is used
    net = make_network()
    a, b = net.attach("alpha"), net.attach("bravo")
    assert dig(a.netns, net.gateway, f"bravo.{DOMAIN}")[:2] == ("NOERROR", [b.ip])
    assert list(cache.iterdir()) == []


def test_unservable_pod_names_are_skipped_and_logged(make_network, tmp_path):
    """Valid Kubernetes / podman names that are no DNS names: ADD succeeds, the name is skipped."""
    net = make_network()
    ns = net.attach("alpha").netns  # the bridge holds the gateway address the server listens on
    log = tmp_path / "dns.log"
    bad = ["x" * 100, "a..b", "has space", "pöd", "-lead", "é" * 70]
    for i, pod in enumerate(bad):
        for namespace in ("", "team"):
            out, rc, err = net.dns("ADD", f"bad{i}{namespace}", netns_path(ns),
                                   f"K8S_POD_NAME={pod}" + (f";K8S_POD_NAMESPACE={namespace}" if namespace else ""),
                                   _fake_prev(net, i), logFile=str(log))
            assert rc == 0, (pod, out, err)
            assert out["dns"]["nameservers"][0] == net.gateway
    skipped = {e["dns_name"] for e in log_events(log, "dns_name_skipped")}
    assert {"x" * 100, "a..b", "has space", "pöd"} <= skipped
    out, rc, err = net.dns("ADD", "good", netns_path(ns), "K8S_POD_NAME=fine", _fake_prev(net, 20))
    assert rc == 0, (out, err)
    assert udp_query(net.gateway, 53, f"fine.{DOMAIN}").rr
    for i in range(len(bad)):
        for namespace in ("", "team"):
            assert net.dns("DEL", f"bad{i}{namespace}")[1] == 0
    assert net.dns("DEL", "good")[1] == 0


def test_authority_model(make_network, upstream, tmp_path):
    """Only names under the domain come from records; <pod>.<namespace> belongs to that namespace's pod."""
    net = make_network()
    log = tmp_path / "dns.log"
    prod = net.attach("web", "prod")
    evil_ns = net.make_netns("dns")
    # pod `web.prod` in namespace `evil`, an alias `web.prod`, a pod called example.com, an alias github.com
    for i, (cid, args, aliases) in enumerate((
            ("evil1", "K8S_POD_NAME=web.prod;K8S_POD_NAMESPACE=evil", None),
            ("evil2", "K8S_POD_NAME=other;K8S_POD_NAMESPACE=evil", ["web.prod", "github.com"]),
            ("evil3", "K8S_POD_NAME=example.com", None))):
        out, rc, err = net.dns("ADD", cid, netns_path(evil_ns), args, _fake_prev(net, i), aliases,
                               logFile=str(log))
        assert rc == 0, (out, err)
    gw = net.gateway
    for tcp in (False, True):
        assert dig(prod.netns, gw, f"web.prod.{DOMAIN}", tcp=tcp)[:2] == ("NOERROR", [prod.ip])
        for name in ("example.com", "github.com", "web.prod"):  # forwarded: the upstream knows none of them
            status, answers, flags = dig(prod.netns, gw, name, tcp=tcp)
            assert (status, answers, "aa" in flags.split()) == ("NXDOMAIN", [], False), (name, tcp)
    # the names are still served where they belong: under the domain
    assert dig(prod.netns, gw, f"github.com.{DOMAIN}")[1] == [str(net.subnet.network_address + 101)]
    assert dig(prod.netns, gw, f"web.prod.evil.{DOMAIN}")[1] == [str(net.subnet.network_address + 100)]
    conflicts = log_events(log, "dns_name_conflict")
    assert {(e["dns_name"], e["owner"]) for e in conflicts} >= {("web.prod", prod.container_id)}
    # prod's pod restarts (DEL, then ADD): the alias answers meanwhile, never after
    net.detach(prod)
    assert dig(None, gw, f"web.prod.{DOMAIN}")[1] == [str(net.subnet.network_address + 101)]
    again = net.attach("web", "prod")
    assert dig(again.netns, gw, f"web.prod.{DOMAIN}")[1] == [again.ip]
    for cid in ("evil1", "evil2", "evil3"):
        assert net.dns("DEL", cid)[1] == 0


def test_clients_outside_the_network_are_dropped(make_network, make_netns):
    """Not an open resolver: a host routed to the gateway address but outside the subnets gets nothing."""
    net = make_network()
    a = net.attach("alpha")
    out_ns = outsider(make_netns, net.gateway)
    assert in_netns(out_ns, "ping", "-c1", "-W2", net.gateway, check=False).returncode == 0, "routed"
    for name in (f"alpha.{DOMAIN}", "www.example.test"):
        for tcp in (False, True):
            assert dig(out_ns, net.gateway, name, tcp=tcp)[0] == "NOANSWER", (name, tcp)
    assert dig(a.netns, net.gateway, f"alpha.{DOMAIN}")[:2] == ("NOERROR", [a.ip])
    assert dig(a.netns, net.gateway, "www.example.test")[:2] == ("NOERROR", ["192.0.2.77"])
    assert dig(None, net.gateway, f"alpha.{DOMAIN}")[:2] == ("NOERROR", [a.ip])  # the node itself


def test_overlong_label_gets_formerr_on_the_wire(make_network):
    net = make_network()
    a = net.attach("alpha")
    for name in (b"\x40" + b"a" * 64 + b"\x03dns\x05pycni\x00", b"\x40" + b"a" * 64 + b"\x03com\x00"):
        query = b"\x21\x43\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + b"\x00\x01\x00\x01"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(query, (net.gateway, 53))
            reply = s.recv(512)
        assert reply[:2] == b"\x21\x43" and reply[3] & 0x0F == 1, reply  # FORMERR
        with socket.create_connection((net.gateway, 53), timeout=2) as c:
            c.sendall(struct.pack("!H", len(query)) + query)
            reply = c.recv(512)
        assert reply[2:4] == b"\x21\x43" and reply[5] & 0x0F == 1, reply
    assert dig(a.netns, net.gateway, f"alpha.{DOMAIN}")[1] == [a.ip]


def test_tcp_tricklers_cannot_lock_out_clients(make_network):
    """64 connections trickling a byte a second neither block TCP service nor live past their deadline."""
    from pycni.plugins.meta.dns import server

    deadline = getattr(server, "TCP_CONNECTION_DEADLINE", 10.0)
    net = make_network()
    a = net.attach("alpha")
    stop = threading.Event()
    conns = [socket.create_connection((net.gateway, 53), timeout=2) for _ in range(server.MAX_TCP_CLIENTS)]
    closed_at: dict = {}
    started = time.monotonic()

    message = b"\x01\x00" + b"a" * 256  # announces 256 bytes, then sends them one a second

    def trickle():
        step = 0
        while not stop.is_set():
            for i, c in enumerate(conns):
                if i in closed_at:
                    continue
                try:
                    c.send(message[step:step + 1])
                except OSError:
                    closed_at[i] = time.monotonic() - started
            step += 1
            stop.wait(1.0)

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        time.sleep(2)
        for _ in range(3):  # while every slot is taken by a trickler, real clients still get answers
            assert dig(a.netns, net.gateway, f"alpha.{DOMAIN}", tcp=True)[1] == [a.ip]
        assert wait_until(lambda: len(closed_at) == len(conns), deadline + 10)
        assert max(closed_at.values()) < deadline + 8, closed_at
    finally:
        stop.set()
        thread.join()
        for c in conns:
            c.close()


def test_forwarding_reuses_one_upstream_socket(make_network, upstream):
    net = make_network()
    a = net.attach("alpha")
    for i in range(20):
        reply = udp_query(net.gateway, 53, f"n{i}.example.test")
        assert [str(rr.rdata) for rr in reply.rr] == ["192.0.2.77"]
    assert dig(a.netns, net.gateway, "tcp.example.test", tcp=True)[1] == ["192.0.2.77"]
    processes = 1 + len(worker_pids(net.state_dir, net.pid()))
    assert len(upstream.client_ports) <= processes, upstream.client_ports  # one socket per server process


@pytest.mark.skipif(shutil.which("dnsperf") is None, reason="dnsperf is not installed")
def test_no_query_lost_under_dnsperf_load(make_network, state_dir):
    """Correctness under a moderate steady load from a pod: every query answered, nothing left after."""
    net = make_network()
    pods = [net.attach(f"pod{i}") for i in range(4)]
    names = [f"pod{i}.{DOMAIN}" for i in range(4)] + [f"missing.{DOMAIN}", "fwd.example.test"]
    stats = dnsperf(pods[0].netns, net.gateway, names, seconds=3, rate=2000)
    assert stats["lost"] == 0 and stats["completed"] == stats["sent"] > 1000, stats
    pid = net.pid()
    for pod in pods:
        net.detach(pod)
    assert wait_until(lambda: not alive(pid), 3)
    assert server_pids(state_dir) == [] and not (state_dir / net.name / "records.json").exists()


def test_worker_processes_share_the_port_and_go_with_the_server(make_network, state_dir):
    """serverProcesses=3: two forked workers answer UDP on the same port (SO_REUSEPORT); they die
    with the server, even by SIGKILL, and a new server binds right away."""
    net = make_network()
    a = net.attach("alpha", serverProcesses=3)
    pid = net.pid()
    assert wait_until(lambda: len(worker_pids(state_dir, pid)) == 2, 5), server_processes(state_dir)
    assert server_pids(state_dir) == [pid]
    for _ in range(40):  # fresh source ports: the kernel spreads them over the three sockets
        assert [str(rr.rdata) for rr in udp_query(net.gateway, 53, f"alpha.{DOMAIN}").rr] == [a.ip]
    assert dig(a.netns, net.gateway, f"alpha.{DOMAIN}", tcp=True)[1] == [a.ip]
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: server_processes(state_dir) == {}, 5), "workers die with their server"
    b = net.attach("bravo")  # a new server on the same address and port
    assert dig(b.netns, net.gateway, f"alpha.{DOMAIN}")[1] == [a.ip]
    for att in list(net.attachments):
        net.detach(att)
    assert wait_until(lambda: server_processes(state_dir) == {}, 5), "the last DEL stops the workers too"
