"""Decoding untrusted JSON (stdin, a delegated plugin's output) into plain values, bounded in depth.

json.loads raises RecursionError (not ValueError) on input nested about a
thousand deep, which surfaced as code 999; input just under that limit
decoded, and then any recursive step (repr in an error message, a dump to
the log) raised it later. Both are a decode failure here: nothing a CNI
config, result or error carries is nested anywhere near MAX_DEPTH.
"""
from __future__ import annotations

import json

TYPE_CHECKING = False  # typing is not imported at run time: it costs every exec milliseconds
if TYPE_CHECKING:
    from typing import Any, Iterable

MAX_DEPTH = 64


class TooDeep(ValueError):
    """JSON nested deeper than MAX_DEPTH (a ValueError, as every other malformed input)."""


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Is `value` nested deeper than `limit` lists/objects? (Iterative: the check itself cannot recurse.)"""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def loads(data: Any) -> Any:
    """json.loads, raising ValueError (TooDeep) for input nested deeper than MAX_DEPTH."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise TooDeep(f"JSON nested too deeply (more than {MAX_DEPTH} levels)") from None
    if too_deep(value):
        raise TooDeep(f"JSON nested too deeply (more than {MAX_DEPTH} levels)")
    return value
