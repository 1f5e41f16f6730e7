"""The one record type of pycni: a light replacement for dataclasses.

`dataclasses` pulls in `inspect` (and with it ast, dis, tokenize ...): about
8 ms per exec, paid on every pod start, and each @dataclass costs about a
millisecond more to create at import. A Record gets the same conveniences —
keyword or positional construction with defaults, equality, repr — from
`__slots__` (the fields, in order) and a `_defaults` map whose callables
(list, dict, classes) are called to make a fresh default. Every record of the
plugins is one: configs, results, netlink messages, attachment tags.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, Tuple


class Record:
    __slots__: "Tuple[str, ...]" = ()
    _defaults: "Dict[str, Any]" = {}

    def __init__(self, *args: "Any", **kwargs: "Any") -> None:
        names = self.__slots__
        setter = object.__setattr__  # FrozenRecord's own __setattr__ refuses
        if not kwargs and len(args) == len(names):  # every field by position (the netlink decoders)
            for name, value in zip(names, args):
                setter(self, name, value)
            return
        if not args and len(kwargs) == len(names) and all(name in kwargs for name in names):  # every field by keyword
            for name in names:
                setter(self, name, kwargs[name])
            return
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes at most {len(names)} arguments")
        values = dict(zip(names, args))
        for name, value in kwargs.items():
            if name not in names or name in values:
                raise TypeError(f"{type(self).__name__}: unexpected or repeated argument {name!r}")
            values[name] = value
        for name in names:
            if name in values:
                value = values[name]
            elif name in self._defaults:
                default = self._defaults[name]
                value = default() if callable(default) else default
            else:
                raise TypeError(f"{type(self).__name__} is missing argument {name!r}")
            setter(self, name, value)

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


class FrozenRecord(Record):
    """An immutable, hashable Record."""

    __slots__ = ()

    def __setattr__(self, name: str, value: "Any") -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(self._values())
