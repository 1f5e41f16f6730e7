"""YAML from a ConfigMap, without alias bombs: aliases are refused, and so is input nested absurdly deep.

A 285-byte template of nested aliases (each `*a` repeating the previous
level) expanded to a 51 MB conflist, and a 361-byte one kept the sync loop
busy for more than 13 minutes. A conflist has no use for aliases (nor merge
keys, which are aliases too), so any alias is an error naming its position.
The pure-Python loader is used (the C one composes aliases out of our
reach); inputs are capped at the ConfigMap size limit by the callers.
"""
from __future__ import annotations

from typing import Any

import yaml

MAX_TEXT_BYTES = 1024 * 1024  # a ConfigMap holds at most 1 MiB


class YamlRefused(ValueError):
    """The text is not YAML we accept (the message says why and where)."""


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise YamlRefused(f"YAML aliases (*name, <<: *name) are not accepted (line {mark.line + 1}, "
                              f"column {mark.column + 1}): write the values out")
        return super().compose_node(parent, index)


def load(text: str) -> Any:
    """The document in `text`; YamlRefused for aliases, over-long or over-deep input, or invalid YAML."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_TEXT_BYTES:
        raise YamlRefused(f"the text is {size} bytes, above the {MAX_TEXT_BYTES}-byte limit of a ConfigMap")
    loader = _NoAliasLoader(text)
    try:
        return loader.get_single_data()
    except YamlRefused:
        raise
    except yaml.YAMLError as exc:
        raise YamlRefused(f"not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise YamlRefused("YAML nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise YamlRefused(f"YAML value not usable: {exc}") from None
    finally:
        loader.dispose()
