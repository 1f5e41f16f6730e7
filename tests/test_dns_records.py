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
    assert sorted(os.listdir(store.dir)) == ["lock", "records.json"]  # no temp files left
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
    assert [str(x.rdata) for x in ask("web", "AAAA")[0].rr] == ["fd00::2"]
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
    assert [str(x.rdata) for x in ask("db")[0].rr] == ["10.0.0.3"]


def test_plugin_module_imports_no_pyroute2_or_dnslib():
    import subprocess

    code = ("import sys; import pycni.plugins.meta.dns.plugin, pycni.plugins.meta.dns.records, pycni.plugins.meta.dns.daemon; "
            "print('pyroute2' in sys.modules, 'dnslib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, check=True).stdout.decode()
    assert out.split() == ["False", "False"]
