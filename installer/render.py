"""Turn the ConfigMap's conflist template (JSON or YAML) into this node's conflist bytes.

Placeholders (see installer/README.md):
  __NODE_NAME__, __POD_CIDR_V4__, __POD_CIDR_V6__, __MTU__  - replaced inside any string;
  a string that is exactly "__MTU__" becomes the number;
  the value "__POD_CIDR_RANGES__" becomes host-local `ranges`: one range set per podCIDR.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any, List, Optional, Set

from pycni.plugins.core.jsonio import MAX_DEPTH, too_deep

NODE_NAME = "__NODE_NAME__"
POD_CIDR_V4 = "__POD_CIDR_V4__"
POD_CIDR_V6 = "__POD_CIDR_V6__"
MTU = "__MTU__"
POD_CIDR_RANGES = "__POD_CIDR_RANGES__"
INLINE = (NODE_NAME, POD_CIDR_V4, POD_CIDR_V6, MTU)
MAX_TEMPLATE_BYTES = 1024 * 1024  # the ConfigMap limit
MAX_CONFLIST_BYTES = 1024 * 1024  # a rendered conflist above this is refused, never written
NEEDS_POD_CIDRS = (POD_CIDR_V4, POD_CIDR_V6, POD_CIDR_RANGES)


class TemplateError(Exception):
    """The template can never render (a rejection); `kind` is "parse" or "render"."""

    def __init__(self, message: str, kind: str = "render") -> None:
        super().__init__(message)
        self.kind = kind


class WaitingForNode(Exception):
    """The template needs facts about the node that are not known yet (not ready, not a rejection)."""


@dataclass(frozen=True)
class NodeFacts:
    name: str
    pod_cidrs: Optional[List[str]]  # None: not known (yet); [] : the Node has none yet
    mtu: int


def parse_template(text: str) -> Any:
    """JSON, or YAML (a superset that also accepts an unquoted __MTU__); no YAML aliases, at most 1 MiB."""
    from . import yamlsafe

    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_TEMPLATE_BYTES:
        raise TemplateError(f"config is {size} bytes, above the {MAX_TEMPLATE_BYTES}-byte limit", "parse")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        json_error = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        try:
            obj = yamlsafe.load(text)
        except yamlsafe.YamlRefused as yaml_error:
            if text.lstrip().startswith(("{", "[")) and "alias" not in str(yaml_error):
                raise TemplateError(f"config is not valid JSON: {json_error}", "parse") from None
            raise TemplateError(f"config refused: {yaml_error}", "parse") from None
    if too_deep(obj, MAX_DEPTH):  # rendering walks it recursively
        raise TemplateError(f"config is nested more than {MAX_DEPTH} levels deep", "parse")
    return obj


def placeholders_used(obj: Any) -> Set[str]:
    found: Set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str):
            found.update(p for p in INLINE + (POD_CIDR_RANGES,) if p in value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(obj)
    return found


def _cidrs(facts: NodeFacts) -> List[str]:
    if facts.pod_cidrs is None or not facts.pod_cidrs:
        if not facts.name:
            raise TemplateError("the config uses podCIDR placeholders but no node name is set (--node-name)")
        raise WaitingForNode(f"waiting for node {facts.name} to get a podCIDR")
    return facts.pod_cidrs


def _family(facts: NodeFacts, version: int) -> str:
    for cidr in _cidrs(facts):
        try:
            if ipaddress.ip_network(cidr, strict=False).version == version:
                return cidr
        except ValueError:
            raise TemplateError(f"node {facts.name} has an invalid podCIDR {cidr!r}") from None
    raise TemplateError(f"the config uses __POD_CIDR_V{version}__ but node {facts.name} has no "
                        f"IPv{version} podCIDR (podCIDRs: {', '.join(_cidrs(facts))})")


def render(template: Any, facts: NodeFacts) -> bytes:
    """The conflist bytes for this node (stable formatting, so unchanged input gives unchanged bytes)."""
    used = placeholders_used(template)
    if NODE_NAME in used and not facts.name:
        raise TemplateError("the config uses __NODE_NAME__ but no node name is set (--node-name)")
    values = {NODE_NAME: facts.name, MTU: str(facts.mtu)}
    if POD_CIDR_V4 in used:
        values[POD_CIDR_V4] = _family(facts, 4)
    if POD_CIDR_V6 in used:
        values[POD_CIDR_V6] = _family(facts, 6)
    ranges = [[{"subnet": cidr}] for cidr in _cidrs(facts)] if POD_CIDR_RANGES in used else None

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            if value == MTU:
                return facts.mtu
            if value == POD_CIDR_RANGES:
                return ranges
            if POD_CIDR_RANGES in value:
                raise TemplateError('"__POD_CIDR_RANGES__" must be a whole JSON value (e.g. "ranges": "__POD_CIDR_RANGES__")')
            for name, replacement in values.items():
                value = value.replace(name, replacement)
            return value
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    try:
        data = (json.dumps(walk(template), indent=2) + "\n").encode()
    except (TypeError, ValueError) as exc:  # YAML can hold dates, sets...: not JSON
        raise TemplateError(f"config holds a value JSON cannot represent: {exc}") from None
    except RecursionError:
        raise TemplateError("config is nested too deeply") from None
    if len(data) > MAX_CONFLIST_BYTES:
        raise TemplateError(f"the rendered conflist is {len(data)} bytes, above the {MAX_CONFLIST_BYTES}-byte "
                            f"limit")
    return data
