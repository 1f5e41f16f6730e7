"""Process entry point: adapts argv/env/stdin/stdout/exit to `dispatch.run`."""
from __future__ import annotations

import os
import sys


def main(plugin_name: str) -> None:
    from .dispatch import run
    from .registry import load

    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    out, code = run(lambda: load(plugin_name), os.environ, stdin)
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.exit(code)
