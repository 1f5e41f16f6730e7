"""VERSION exec time of every zipapp vs the reference plugins, with /usr/bin/python3.

    python3 bench/version.py [--runs N]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DIST_BIN, REFERENCE_BIN, exec_plugin, report, require_built, runtime_env, time_runs  # noqa: E402

PAIRS = [("pycni-bridge", "bridge"), ("pycni-macvlan", "macvlan"),
         ("pycni-host-local", "host-local"), ("pycni-dns", None)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    runs = parser.parse_args().runs
    require_built(*(p for p, _ in PAIRS))
    env = runtime_env("VERSION")
    stdin = b'{"cniVersion":"1.0.0"}'
    for ours, ref in PAIRS:
        rows = {}
        if ref:
            rows[f"reference {ref}"] = time_runs(lambda: exec_plugin(REFERENCE_BIN / ref, env, stdin), runs)
        rows[ours] = time_runs(lambda: exec_plugin(DIST_BIN / ours, env, stdin), runs)
        report(f"VERSION: {ours}", rows, baseline=f"reference {ref}" if ref else None)


if __name__ == "__main__":
    main()
