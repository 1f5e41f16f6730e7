"""Timing helpers for the benchmarks: run commands many times, report medians and ratios.

Benchmarks are not tests: they print figures, they do not assert them. Each
compares pycni with the Go reference plugins (/usr/lib/cni) in the same run,
because absolute times drift on a shared machine while ratios hold.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import helpers  # noqa: E402  (the tests' way of starting a node server)

DIST_BIN = ROOT / "dist" / "bin"
REFERENCE_BIN = helpers.REFERENCE_BIN
NODE_PYTHON = helpers.NODE_PYTHON  # Debian's python3, as a node runs plugins
RUNTIME_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # /usr/bin/python3 first, as on a node


def runtime_env(command: str, **cni: str) -> Dict[str, str]:
    """A container runtime's bare environment for one plugin call."""
    env = {"CNI_COMMAND": command, "PATH": RUNTIME_PATH}
    env.update({f"CNI_{k.upper()}": v for k, v in cni.items() if v})
    if "PYCNI_CACHE_DIR" in os.environ:
        env["PYCNI_CACHE_DIR"] = os.environ["PYCNI_CACHE_DIR"]
    return env


def exec_plugin(binary: Path, env: Mapping[str, str], stdin: bytes) -> bytes:
    proc = subprocess.run([str(binary)], input=stdin, env=dict(env), cwd="/",
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise RuntimeError(f"{binary.name} {env.get('CNI_COMMAND')} failed: {proc.stdout!r} {proc.stderr!r}")
    return proc.stdout


def time_runs(fn: Callable[[], object], runs: int, warmup: int = 2) -> List[float]:
    """Wall times in milliseconds of `runs` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def wall_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def time_interleaved(fns: Mapping[str, Callable[[], object]], runs: int, warmup: int = 2,
                     measure: Callable[[Callable[[], object]], Any] = wall_ms) -> Dict[str, List[Any]]:
    """`measure` of each contender `runs` times, taking turns run by run after `warmup` untimed
    rounds: drift on a shared machine then hits them all alike, and their ratios stay fair."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: Dict[str, List[Any]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            samples[name].append(measure(fn))
    return samples


def median(times: Sequence[float]) -> float:
    return statistics.median(times)


def report(title: str, rows: Dict[str, List[float]], baseline: Optional[str] = None) -> None:
    """Print one table: median, p10, p90 (ms) and each row's ratio to `baseline`."""
    print(f"\n== {title}")
    base = median(rows[baseline]) if baseline else None
    for name, times in rows.items():
        q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
        ratio = f"  x{median(times) / base:.2f} vs {baseline}" if base and name != baseline else ""
        print(f"  {name:<42} median {median(times):8.2f} ms  p10 {q[0]:8.2f}  p90 {q[-1]:8.2f}  (n={len(times)}){ratio}")
    sys.stdout.flush()


def node_python_path(work: Path) -> str:
    """A PYTHONPATH under `work` that lets NODE_PYTHON import this tree's pycni (and dnslib) as installed."""
    import importlib.util

    tree = work / "node-python"
    (tree / "pycni").mkdir(parents=True, exist_ok=True)
    links = {tree / "pycni" / "plugins": ROOT / "plugins"}
    for library in ("dnslib",):
        spec = importlib.util.find_spec(library)
        links[tree / library] = Path(list(spec.submodule_search_locations)[0])
    for link, target in links.items():
        if not link.exists():
            link.symlink_to(target)
    return str(tree)


def run_dir() -> Path:
    """A fresh directory for node server sockets and spools on tmpfs, as a node's /run is (the
    sh handoff creates and removes a file per request there; the caller removes the directory)."""
    return Path(tempfile.mkdtemp(prefix="pycni-bench-run-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))


def start_node_server(work: Path, socket_path: Path, *args: str) -> subprocess.Popen:
    """pycni-server on NODE_PYTHON (Debian's build, as the image runs it); returns once it answers."""
    env = dict(os.environ, PYTHONPATH=node_python_path(work))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return helpers.start_node_server(socket_path, *args, python=NODE_PYTHON, env=env)


def require_built(*names: str) -> None:
    """The zipapps exist and are built from this tree: a node server runs this tree's code and
    declines a request from another build (the client then runs it in-process), so a stale
    build would quietly measure the standalone path under the server's name."""
    from pycni.plugins.core.buildinfo import own_code_id
    from pycni.plugins.core.samebuild import stamped_plugin

    missing = [n for n in names if not (DIST_BIN / n).exists()]
    if missing:
        sys.exit(f"build the zipapps first (make zipapps): missing {missing}")
    stale = [n for n in names if stamped_plugin(str(DIST_BIN / n), own_code_id()) is None]
    if stale:
        sys.exit(f"{stale} in {DIST_BIN} are not built from this tree's code: make zipapps")


def as_json(data: object) -> bytes:
    return json.dumps(data).encode()
