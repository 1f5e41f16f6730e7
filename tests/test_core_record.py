"""core.record: the one record type (configs, results, netlink messages, attachment tags)."""
from __future__ import annotations

import pytest

from pycni.plugins.core.record import FrozenRecord, Record


class Pair(Record):
    __slots__ = ("a", "b")
    _defaults = {"b": list}


class FrozenPair(FrozenRecord):
    __slots__ = ("a", "b")


def test_every_way_of_filling_the_fields_gives_the_same_record() -> None:
    assert Pair(1, [2]) == Pair(a=1, b=[2]) == Pair(1, b=[2]) == Pair(b=[2], a=1)
    assert Pair(1).b == [] and Pair(1).b is not Pair(1).b  # a callable default is called each time
    assert repr(Pair(1, 2)) == "Pair(a=1, b=2)"


@pytest.mark.parametrize("args, kwargs", [((), {"a": 1, "c": 2}),  # as many keywords as fields, one unknown
                                          ((1,), {"a": 1}),  # repeated
                                          ((1, 2, 3), {}),  # too many
                                          ((), {"b": 1})])  # missing, no default
def test_wrong_arguments_are_a_type_error(args: tuple, kwargs: dict) -> None:
    with pytest.raises(TypeError):
        Pair(*args, **kwargs)


def test_frozen_records_are_immutable_and_hashable() -> None:
    pair = FrozenPair(1, 2)
    with pytest.raises(AttributeError):
        pair.a = 3  # type: ignore[misc]
    assert hash(pair) == hash(FrozenPair(a=1, b=2)) and pair != Pair(1, 2)


def test_the_kernel_and_config_records_are_core_records() -> None:
    from pycni.plugins.kernel.attachment import Tag
    from pycni.plugins.kernel.netlink import Addr, Link, RouteEntry
    from pycni.plugins.main.bridge import BridgeConfig
    from pycni.plugins.main.macvlan import MacvlanConfig

    for cls in (Link, Addr, RouteEntry, BridgeConfig, MacvlanConfig):
        assert issubclass(cls, Record)
    assert issubclass(Tag, FrozenRecord)
    assert BridgeConfig(bridge="br9").preserve_default_vlan is True
