"""The identity of the plugin code: one hash over the plugins package's sources.

build.py stamps it into each zipapp; the node server computes it for itself,
and runs a zipapp's request only when the two match, so a request is never
served by code other than the code the runtime was pointed at.
"""
from __future__ import annotations

import hashlib
from pathlib import Path


def code_id(plugins_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(plugins_dir.rglob("*.py")):
        name = path.relative_to(plugins_dir).as_posix().encode()
        digest.update(name + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:20]


def own_code_id() -> str:
    return code_id(Path(__file__).resolve().parent.parent)  # plugins/, above core/
