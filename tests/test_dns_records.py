"""pycni-dns record store and resolver, in-process (no kernel, no server process)."""
from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from pycni.plugins.meta.dns.records import (
    Entry, NetworkStore, Records, Table, dns_name_problem, normalize_name, parse_hostport, read_records,
)
from pycni.plugins.core.errors import CNIError


def test_previous_live_owner_gets_a_name_back():
    r = Records()
    r.put(Entry("old", "eth0", ["web"], ["10.0.0.2"]))
    r.put(Entry("new", "eth0", ["web"], ["10.0.0.3"]))
    assert Table.build(r).names["web"] == (["10.0.0.3"], [])
    r.remove("new", "eth0")
    table = Table.build(r)
    assert table.names["web"] == (["10.0.0.2"], []) and table.ptr == {"10.0.0.2": ["web"]}


@pytest.mark.parametrize("order", ["qualified first", "bare first"])
def test_namespace_qualified_name_outranks_every_bare_claim(order):
    """Pod `web` in namespace `prod` owns web.prod; pod `web.prod` in `evil` or an alias cannot take it."""
    prod = Entry("prod-web", "eth0", ["web", "web.prod"], ["10.0.0.2"], qualified=["web.prod"])
    evil = Entry("evil-pod", "eth0", ["web.prod", "web.prod.evil"], ["10.0.0.6"], qualified=["web.prod.evil"])
    r = Records()
    for entry in ([prod, evil] if order == "qualified first" else [evil, prod]):
        r.put(entry)
    table = Table.build(r)
    assert table.names["web.prod"] == (["10.0.0.2"], [])
    assert table.names["web.prod.evil"] == (["10.0.0.6"], [])
    assert table.ptr["10.0.0.6"] == ["web.prod.evil"]  # the name it lost is not its PTR either
    name, owner, others = r.conflicts(evil)[0]
    assert (name, owner.container_id, [e.container_id for e in others]) == ("web.prod", "prod-web", ["evil-pod"])
    r.remove("prod-web", "eth0")  # the qualified owner leaves: the bare claim is served meanwhile
    assert Table.build(r).names["web.prod"] == (["10.0.0.6"], [])


def test_newest_wins_and_older_del_keeps_name():
    r = Records()
    r.put(Entry("old", "eth0", ["web", "old"], ["10.0.0.2"]))
    r.put(Entry("new", "eth0", ["web"], ["10.0.0.3"]))
    assert Table.build(r).names["web"] == (["10.0.0.3"], [])
    assert r.remove("old", "eth0")
    table = Table.build(r)
    assert table.names["web"] == (["10.0.0.3"], []) and "old" not in table.names
    assert not r.remove("old", "eth0")  # idempotent


def test_readd_replaces_entry_and_ptr():
    r = Records()
    r.put(Entry("c1", "eth0", ["a"], ["10.0.0.2", "fd00::2"]))
    r.put(Entry("c1", "eth0", ["a", "b"], ["10.0.0.9"]))
    table = Table.build(r)
    assert len(r.entries) == 1 and table.names["b"] == (["10.0.0.9"], [])
    assert table.ptr == {"10.0.0.9": ["a", "b"]}


def test_gc_keep_only():
    r = Records()
    for cid in ("a", "b", "c"):
        r.put(Entry(cid, "eth0", [cid], []))
    dropped = r.keep_only([("b", "eth0")])
    assert [e.container_id for e in dropped] == ["a", "c"] and [e.container_id for e in r.entries] == ["b"]


@pytest.mark.parametrize("name,ok", [("web", True), ("a.b-c_d", True), ("", False), ("bad name", False),
                                     ("-x", False), ("x" * 64, False), ("a..b", False)])
def test_dns_names(name, ok):
    assert (dns_name_problem(name) == "") is ok


def test_normalize_and_hostport():
    assert normalize_name("Web.DNS.pycni.", "dns.pycni") == "web"
    assert parse_hostport("10.0.0.1") == ("10.0.0.1", 53)
    assert parse_hostport("10.0.0.1:5353") == ("10.0.0.1", 5353)
    assert parse_hostport("[fd00::1]:54") == ("fd00::1", 54)
    assert parse_hostport("fd00::1") == ("fd00::1", 53)


def test_store_paths_are_confined(tmp_path):
    for bad in ("..", "../x", "a/b", "", "/abs"):
        with pytest.raises(CNIError) as err:
            NetworkStore(str(tmp_path), bad)
        assert err.value.code == 7
    with pytest.raises(CNIError):
        NetworkStore("relative", "net")


def test_store_atomic_save_and_empty_removes(tmp_path):
    store = NetworkStore(str(tmp_path / "state"), "net1")
    with store.locked():
        r = store.load()
        r.server = {"domain": "d"}
        r.put(Entry("c1", "eth0", ["a"], ["10.0.0.2"]))
        store.save(r)
    assert read_records(store.records_path).entries[0].names == ["a"]
    assert sorted(os.listdir(store.dir)) == ["generation", "lock", "records.json"]  # no temp files left
    with store.locked():
        r = store.load()
        r.remove("c1", "eth0")
        store.save(r)
    assert not os.path.exists(store.records_path)


def test_lock_excludes_and_times_out(tmp_path):
    store = NetworkStore(str(tmp_path), "net1")
    held = threading.Event()
    release = threading.Event()

    def holder():
        with store.locked():
            held.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(5)
    start = time.monotonic()
    with pytest.raises(CNIError) as err:
        with store.locked(timeout=0.2):
            pass
    assert err.value.code == 11 and time.monotonic() - start >= 0.2
    release.set()
    t.join()
    with store.locked(timeout=1):
        pass


def test_resolver_answers_and_formerr(tmp_path):
    pytest.importorskip("dnslib")
    from dnslib import QTYPE, RCODE, DNSRecord

    from pycni.plugins.meta.dns.server import Resolver

    store = NetworkStore(str(tmp_path), "n")
    with store.locked():
        r = store.load()
        r.server = {"domain": "dns.pycni", "ttl": 5, "listen": ["127.0.0.1"], "port": 53, "upstreams": []}
        r.put(Entry("c1", "eth0", ["web"], ["10.0.0.2", "fd00::2"]))
        store.save(r)
    res = Resolver(store.records_path)

    def ask(name, qtype="A"):
        data, fwd = res.resolve(DNSRecord.question(name, qtype).pack(), udp=True)
        return (None if data is None else DNSRecord.parse(data)), fwd

    reply, fwd = ask("WEB.dns.pycni")
    assert not fwd and [str(x.rdata) for x in reply.rr] == ["10.0.0.2"] and reply.header.aa
    assert [str(x.rdata) for x in ask("web.dns.pycni", "AAAA")[0].rr] == ["fd00::2"]
    assert ask("web") == (None, True)  # outside the domain: forwarded
    assert ask("2.0.0.10.in-addr.arpa", "PTR")[0].rr[0].rdata.label == "web.dns.pycni."
    assert ask("x.dns.pycni")[0].header.rcode == RCODE.NXDOMAIN
    assert ask("example.com") == (None, True)
    assert ask("9.9.9.10.in-addr.arpa", "PTR") == (None, True)
    assert ask("dns.pycni", "SOA")[0].rr[0].rtype == QTYPE.SOA
    # malformed: header says one question, body is garbage -> FORMERR with the same ID
    data, fwd = res.resolve(b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0", udp=True)
    assert data[:2] == b"\xab\xcd" and data[3] & 0xF == RCODE.FORMERR
    assert res.resolve(b"\x00\x01", udp=True) == (None, False)  # too short: dropped
    response = DNSRecord.question("web").reply().pack()
    assert res.resolve(response, udp=True) == (None, False)  # responses are never answered
    # a record change is seen on the next query, with no restart
    with store.locked():
        r = store.load()
        r.put(Entry("c2", "eth0", ["db"], ["10.0.0.3"]))
        store.save(r)
    assert [str(x.rdata) for x in ask("db.dns.pycni")[0].rr] == ["10.0.0.3"]


def test_plugin_module_imports_no_pyroute2_or_dnslib():
    import subprocess

    code = ("import sys; import pycni.plugins.meta.dns.plugin, pycni.plugins.meta.dns.records, pycni.plugins.meta.dns.daemon; "
            "print('pyroute2' in sys.modules, 'dnslib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, check=True).stdout.decode()
    assert out.split() == ["False", "False"]


def _write_records(tmp_path, entries):
    store = NetworkStore(str(tmp_path), "n")
    with store.locked():
        r = store.load()
        r.server = {"domain": "dns.pycni", "ttl": 5, "listen": ["127.0.0.1"], "port": 53, "upstreams": [],
                    "subnets": ["10.0.0.0/24"]}
        for entry in entries:
            r.put(entry)
        store.save(r)
    return store


def test_names_outside_the_domain_are_never_answered_from_records(tmp_path):
    """A pod named example.com or an alias github.com is served only under the domain."""
    pytest.importorskip("dnslib")
    from dnslib import DNSRecord

    from pycni.plugins.meta.dns.server import Resolver

    store = _write_records(tmp_path, [Entry("c1", "eth0", ["example.com", "github.com", "com"], ["10.0.0.2"])])
    res = Resolver(store.records_path)
    for name in ("example.com", "github.com", "com", "www.github.com"):
        for qtype in ("A", "AAAA", "ANY"):
            assert res.resolve(DNSRecord.question(name, qtype).pack(), udp=True) == (None, True), (name, qtype)
    data, fwd = res.resolve(DNSRecord.question("github.com.dns.pycni").pack(), udp=True)
    assert not fwd and [str(x.rdata) for x in DNSRecord.parse(data).rr] == ["10.0.0.2"]


@pytest.mark.parametrize("wire_name", [b"\x40" + b"a" * 64, (b"\x3f" + b"c" * 63) * 4],
                         ids=["64-octet label", "name over 255 octets"])
def test_overlong_label_gets_formerr(tmp_path, wire_name):
    pytest.importorskip("dnslib")
    from pycni.plugins.meta.dns.server import Resolver

    store = _write_records(tmp_path, [Entry("c1", "eth0", ["web"], ["10.0.0.2"])])
    res = Resolver(store.records_path)
    for suffix in (b"\x03dns\x05pycni\x00", b"\x07example\x03com\x00"):
        query = b"\x4f\x11\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + wire_name + suffix
        query += b"\x00\x01\x00\x01"
        data, fwd = res.resolve(query, udp=True)
        assert not fwd and data[:2] == b"\x4f\x11" and data[2] & 0x80 and data[3] & 0x0F == 1, (suffix, data)


def test_clients_are_the_network_and_the_node():
    from pycni.plugins.meta.dns.server import Clients, Settings

    clients = Clients()
    clients.update(Settings({"subnets": ["10.9.8.0/24", "fd00:9::/64"]}), Table({}, {"10.7.0.5": ["x"]}, 1))
    for host in ("10.9.8.7", "fd00:9::5", "10.7.0.5", "127.0.0.1", "::1"):
        assert clients.allowed(host), host
    for host in ("192.0.2.1", "10.9.9.1", "10.7.0.6", "2001:db8::1", "not an address"):
        assert not clients.allowed(host), host
