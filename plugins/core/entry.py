"""Process entry point: adapts argv/env/stdin/stdout/exit to `dispatch.run`."""
from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional


def main(plugin_name: str, stdin: Optional[bytes] = None, code_id: str = "") -> None:
    """Run one request; `stdin` is given when the launcher already read it (see _pycni_client).

    `code_id`: this zipapp's build stamp. An IPAM delegate stamped with the same one then
    runs in this process instead of a second interpreter (samebuild.py).
    """
    from pycni.plugins.core.dispatch import run_request
    from pycni.plugins.core.samebuild import SameBuildRunner

    if stdin is None:
        stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    runner = SameBuildRunner(code_id) if code_id else None
    out, code = run_request(plugin_name, os.environ, stdin, runner)
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.exit(code)
