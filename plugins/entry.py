"""Process entry point: adapts argv/env/stdin/stdout/exit to `dispatch.run`."""
from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional


def main(plugin_name: str, stdin: Optional[bytes] = None) -> None:
    """Run one request; `stdin` is given when the launcher already read it (see _pycni_client)."""
    from .dispatch import run
    from .registry import load

    if stdin is None:
        stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    out, code = run(lambda: load(plugin_name), os.environ, stdin)
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.exit(code)
