"""Executing CNI plugin binaries: finding them on CNI_PATH, running them, reading their answer.

Used for IPAM delegation inside plugins and by the `pycni` command to run a chain.
"""
from __future__ import annotations

import os
import subprocess

from pycni.plugins.core.errors import DECODE_FAILURE, INTERNAL, INVALID_CONFIG, IO_FAILURE, CNIError
from pycni.plugins.core.jsonio import loads

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    from typing import Callable, Mapping, Optional, Sequence, Tuple

    # (binary path, environment, stdin) -> (stdout, exit code); for annotations only
    Runner = Callable[[str, Mapping[str, str], bytes], Tuple[bytes, int]]

EXEC_TIMEOUT_SECONDS = 120.0


def find_plugin(plugin_type: str, paths: Sequence[str]) -> str:
    if not plugin_type or "/" in plugin_type or plugin_type in (".", ".."):
        raise CNIError(INVALID_CONFIG, f"invalid plugin type {plugin_type!r}")
    for directory in paths:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CNIError(INVALID_CONFIG, f"failed to find plugin {plugin_type!r} in path {list(paths)}")


def run_binary(binary: str, environ: Mapping[str, str], stdin: bytes) -> Tuple[bytes, int]:
    try:
        proc = subprocess.run(
            [binary], input=stdin, env=dict(environ), stdout=subprocess.PIPE,
            timeout=EXEC_TIMEOUT_SECONDS, cwd="/",
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CNIError(IO_FAILURE, f"failed to execute plugin {binary}: {exc}") from None
    return proc.stdout, proc.returncode


def error_from_output(binary: str, stdout: bytes, code: int) -> CNIError:
    """The plugin's own error object when it printed one, else a description of the failure."""
    try:
        obj = loads(stdout)
        if isinstance(obj, dict) and isinstance(obj.get("code"), int):
            return CNIError(obj["code"], str(obj.get("msg", "")), str(obj.get("details", "") or ""))
    except ValueError:
        pass
    tail = stdout.decode(errors="replace").strip()[-400:]
    return CNIError(INTERNAL, f"plugin {os.path.basename(binary)} failed with exit code {code}", tail)


def execute(binary: str, environ: Mapping[str, str], stdin: bytes, runner: Optional[Runner] = None) -> bytes:
    """Run a plugin; return its stdout on success, raise its error as a CNIError otherwise."""
    stdout, code = (runner or run_binary)(binary, environ, stdin)
    if code != 0:
        raise error_from_output(binary, stdout, code)
    return stdout


def decode_output(binary: str, stdout: bytes) -> dict:
    try:
        obj = loads(stdout)
    except ValueError:
        raise CNIError(DECODE_FAILURE, f"plugin {os.path.basename(binary)} printed invalid JSON") from None
    if not isinstance(obj, dict):
        raise CNIError(DECODE_FAILURE, f"plugin {os.path.basename(binary)} printed {type(obj).__name__}, not an object")
    return obj
