"""The CPython bundle (installer/bundle.py) vs the node's own python3, as a runtime execs the plugins.

    make zipapps && python3 bench/bundle.py [--runs N]

The bundle is built from /usr/bin/python3 and laid out as the installer does
(`<bin>/.pycni-python/<id>`, `current`); a second bin dir holds the same zipapps
without it (the node's python3 runs them). Each row is the median of N execs,
contenders interleaved run by run, with the Go reference host-local as baseline:

1. first exec after install: VERSION with an empty zipapp cache (the payload is
   unpacked and byte-compiled by the interpreter that runs it);
2. warm VERSION;  3. warm pycni-host-local ADD+DEL;
4. the prelude before/after: today's zipapp with the prelude from before the bundle check
   vs this prelude, both on the node's python3: what the added `[ -x ]` costs.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DIST_BIN, NODE_PYTHON, REFERENCE_BIN, ROOT, exec_plugin, report, require_built, \
    time_interleaved  # noqa: E402
from common import runtime_env as common_runtime_env  # noqa: E402

PLUGINS = ("pycni-bridge", "pycni-host-local", "pycni-dns", "pycni-macvlan")


def _bundle_module():
    """installer/bundle.py by path: it imports nothing of pycni, and this runs on the node's python3."""
    spec = importlib.util.spec_from_file_location("_pycni_bundle", ROOT / "installer" / "bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def bin_dirs(work: Path) -> Dict[str, Path]:
    """{"bundle": bin dir with the bundle installed, "python3": the same zipapps alone}."""
    bundle = _bundle_module()
    dirs = {"bundle": work / "with-bundle", "python3": work / "node-python3"}
    for d in dirs.values():
        d.mkdir()
        for name in PLUGINS:
            shutil.copy2(DIST_BIN / name, d / name)
    meta = bundle.build(NODE_PYTHON, dirs["bundle"] / ".pycni-python" / "tmp",
                        bundle.zipapp_code_path(DIST_BIN / "pycni-dns"))
    base = dirs["bundle"] / ".pycni-python"
    (base / "tmp").rename(base / meta["id"])
    (base / "current").symlink_to(meta["id"])
    size = bundle.disk_usage(base / meta["id"])
    tgz = subprocess.run(["tar", "czf", "-", "-C", str(base), meta["id"]], stdout=subprocess.PIPE).stdout
    print(f"bundle {meta['id']}: CPython {meta['python']}, {meta['files']} files, "
          f"{size / 2**20:.1f} MiB on disk, {len(tgz) / 2**20:.1f} MiB as .tar.gz")
    return dirs


PRELUDE_BEFORE_BUNDLE = "48127c6^"


def old_prelude_copy(work: Path) -> Path:
    """pycni-host-local with the prelude from before the bundle (the parent of 48127c6, which added the
    bundle check): same archive, other first lines. Not `main`: the bundle is on main now."""
    old = subprocess.run(["git", "-C", str(ROOT), "show", f"{PRELUDE_BEFORE_BUNDLE}:zipapp/prelude.sh"],
                         stdout=subprocess.PIPE, check=True).stdout
    data = (DIST_BIN / "pycni-host-local").read_bytes()
    head, archive = data[:data.index(b"PK\x03\x04")], data[data.index(b"PK\x03\x04"):]
    stamps = [line for line in head.split(b"\n") if line.startswith((b"# pycni-build: ", b"# pycni-payload: "))]
    lines = old.split(b"\n")
    old = b"\n".join([lines[0], *stamps, *lines[3:]])
    target = work / "old-prelude" / "pycni-host-local"
    target.parent.mkdir()
    target.write_bytes(old + archive)
    target.chmod(0o755)
    return target


def runtime_env(command: str, **cni: str) -> Dict[str, str]:
    """common.runtime_env, standalone: never a node server some other process may run here."""
    return dict(common_runtime_env(command, **cni), PYCNI_SERVER_SOCKET="off")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs
    require_built(*PLUGINS)
    reference = REFERENCE_BIN / "host-local"
    version_in = b'{"cniVersion":"1.0.0"}'
    with tempfile.TemporaryDirectory(prefix="pycni-bench-bundle-") as tmp:
        work = Path(tmp)
        dirs = bin_dirs(work)
        counter = [0]

        def fresh_cache() -> str:
            counter[0] += 1
            path = work / "caches" / str(counter[0])
            path.mkdir(parents=True, mode=0o755)
            return str(path)

        def version(binary: Path, cache: Callable[[], str]) -> Callable[[], object]:
            return lambda: exec_plugin(binary, dict(runtime_env("VERSION"), PYCNI_CACHE_DIR=cache()), version_in)

        warm = {label: fresh_cache() for label in dirs}
        first = {"reference host-local": version(reference, lambda: ""),
                 **{f"pycni-host-local via {label}": version(d / "pycni-host-local", fresh_cache)
                    for label, d in dirs.items()}}
        report("first exec after install: VERSION, empty zipapp cache",
               time_interleaved(first, runs, warmup=1), baseline="reference host-local")
        again = {"reference host-local": version(reference, lambda: ""),
                 **{f"pycni-host-local via {label}": version(d / "pycni-host-local", lambda label=label: warm[label])
                    for label, d in dirs.items()}}
        report("warm exec: VERSION", time_interleaved(again, runs), baseline="reference host-local")

        def add_del(binary: Path, cache: str, data: Path) -> Callable[[], object]:
            conf = json.dumps({"cniVersion": "1.0.0", "name": "bench", "type": "bridge", "ipam": {
                "type": "host-local", "dataDir": str(data), "ranges": [[{"subnet": "10.201.0.0/16"}]]}}).encode()

            def run() -> None:
                for command in ("ADD", "DEL"):
                    env = runtime_env(command, containerid="c1", netns="/var/run/netns/bench", ifname="eth0",
                                      path=str(REFERENCE_BIN))
                    if cache:
                        env["PYCNI_CACHE_DIR"] = cache
                    exec_plugin(binary, env, conf)
            return run

        pairs = {"reference host-local": add_del(reference, "", work / "data-ref"),
                 **{f"pycni-host-local via {label}": add_del(d / "pycni-host-local", warm[label], work / f"data-{label}")
                    for label, d in dirs.items()}}
        report("warm exec: host-local ADD+DEL", time_interleaved(pairs, runs), baseline="reference host-local")

        old = old_prelude_copy(work)
        prelude = {"reference host-local": version(reference, lambda: ""),
                   "prelude before the bundle (node python3)": version(old, lambda: warm["python3"]),
                   "this prelude (node python3, no bundle)": version(dirs["python3"] / "pycni-host-local",
                                                                     lambda: warm["python3"])}
        report("prelude before/after: warm VERSION", time_interleaved(prelude, runs), baseline="reference host-local")


if __name__ == "__main__":
    main()
