"""IPAM delegation to a pycni plugin of this very build, run in-process instead of exec'd.

A zipapp's prelude is stamped "# pycni-build: <plugin> <code id>" by build.py.
When the delegate binary carries our own code id, running its plugin here is
the same code on the same env and stdin, and gives the stdout and exit code
the exec would have: minus one interpreter start (~45 ms standalone).
"""
from __future__ import annotations

import os

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    from typing import Dict, Mapping, Optional, Tuple

STAMP_PREFIX = b"# pycni-build: "
STAMP_SCAN_BYTES = 256


class SameBuildRunner:
    """IPAM delegation that runs a pycni plugin of this very code in-process instead of exec'ing it.

    Only when the delegate binary is a pycni zipapp stamped with our code id:
    then the in-process run is the same code on the same env and stdin, and
    its stdout and exit code are those of the exec. Anything else is exec'd.
    """

    def __init__(self, code_id: str) -> None:
        self.code_id = code_id
        self._seen: Dict[Tuple[int, int, int, int], Optional[str]] = {}

    def plugin_of(self, binary: str) -> Optional[str]:
        try:
            st = os.stat(binary)
        except OSError:
            return None
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        if key not in self._seen:
            self._seen[key] = stamped_plugin(binary, self.code_id)
        return self._seen[key]

    def __call__(self, binary: str, environ: Mapping[str, str], stdin: bytes) -> Tuple[bytes, int]:
        plugin = self.plugin_of(binary)
        if plugin is None:
            from pycni.plugins.core.invoke import run_binary  # subprocess: only when there is an exec to do

            return run_binary(binary, environ, stdin)
        from pycni.plugins.core.dispatch import run_request

        return run_request(plugin, environ, stdin, self)


def stamped_plugin(binary: str, code_id: str) -> Optional[str]:
    """The plugin name when `binary` is a pycni zipapp built from code `code_id`.

    build.py stamps "# pycni-build: <plugin> <code id>" as the prelude's second
    line: reading it costs one small read, where opening the zip cost ~2 ms.
    """
    try:
        with open(binary, "rb") as f:
            head = f.read(STAMP_SCAN_BYTES)
    except OSError:
        return None
    lines = head.split(b"\n", 2)
    if len(lines) < 3 or not lines[1].startswith(STAMP_PREFIX):
        return None
    fields = lines[1][len(STAMP_PREFIX):].decode("ascii", "replace").split()
    if len(fields) == 2 and fields[1] == code_id:
        return fields[0]
    return None
