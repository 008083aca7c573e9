"""model.quick_init: the __init__ it gives a frozen dataclass builds the
same instance as the one dataclasses writes, and refuses classes whose
__init__ does more than set fields."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import InitVar, dataclass, field

import pytest

from exporter.evaluate import ArrivalPlan
from exporter.model import CheckIn, Kind, quick_init
from exporter.storage import RecordResult
from exporter.web.fast_ping import _Ping
from exporter.web.healthchecks import PingPath

QUICK = [CheckIn, RecordResult, ArrivalPlan, PingPath, _Ping]


def plain_twin(cls: type) -> type:
    """The same fields in a frozen dataclass with dataclasses' own __init__."""
    return dataclasses.make_dataclass(
        f"Plain{cls.__name__}",
        [(f.name, f.type, dataclasses.field(default=f.default, default_factory=f.default_factory))
         for f in dataclasses.fields(cls)],
        frozen=True,
    )


@pytest.mark.parametrize("cls", QUICK, ids=lambda cls: cls.__name__)
def test_the_quick_init_takes_and_keeps_what_the_dataclass_init_does(cls):
    twin = plain_twin(cls)
    assert str(inspect.signature(cls)) == str(inspect.signature(twin))
    required = [f for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    args = [f"value-{f.name}" for f in required]
    quick, plain = cls(*args), twin(*args)
    assert vars(quick) == vars(plain)
    everything = {f.name: f"given-{f.name}" for f in dataclasses.fields(cls)}
    assert vars(cls(**everything)) == vars(twin(**everything)) == everything
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.__setattr__(required[0].name, "changed")
    with pytest.raises(TypeError):
        cls(*args, nonsense=1)
    with pytest.raises(TypeError):
        cls()


def test_default_factories_make_a_new_value_for_each_instance():
    first, second = CheckIn("job", Kind.SUCCESS, 1.0), CheckIn("job", Kind.SUCCESS, 1.0)
    assert first.meta == {} and first.meta is not second.meta
    assert first == second and dataclasses.replace(first, run_id="r").run_id == "r"


def test_classes_whose_init_does_more_are_refused():
    @dataclass(frozen=True)
    class WithPostInit:
        a: int

        def __post_init__(self):
            pass

    @dataclass(frozen=True)
    class WithInitVar:
        a: int
        b: InitVar[int] = 0

    @dataclass(frozen=True)
    class WithKeywordOnly:
        a: int = field(kw_only=True)

    @dataclass(frozen=True)
    class WithoutInit:
        a: int
        b: int = field(init=False, default=0)

    @dataclass(frozen=True, slots=True)
    class WithSlots:
        a: int

    @dataclass
    class NotFrozen:
        a: int

    for cls in (WithPostInit, WithInitVar, WithKeywordOnly, WithoutInit, WithSlots, NotFrozen):
        with pytest.raises(TypeError):
            quick_init(cls)
