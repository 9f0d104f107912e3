"""The feature assembler: wide vector layout, defaults for unknown/stale rows, request context."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tailguard.decision import Flag
from tailguard.errors import ValidationError
from tailguard.features.assembler import FeatureAssembler
from tailguard.features.store import InMemoryOnlineStore
from tailguard.features.view import compile_views
from tailguard.spec import Duration, EntitySpec, FeatureViewSpec, FieldSpec, ViewSource
from tailguard.testing import FakeClock

TTL_NS = 5_000_000_000
ENTITIES = (EntitySpec(name="user"),)
PROFILE = FeatureViewSpec(
    name="profile",
    entity="user",
    ttl=Duration(TTL_NS / 1e9),
    fields=(FieldSpec(name="age", default=-1.0), FieldSpec(name="score", default=0.5)),
)
CLICKS = FeatureViewSpec(name="clicks", entity="user", fields=(FieldSpec(name="n", default=7.0),))
MODULE = '''"""Request transform for assembler tests."""


def ratio(a, b):
    return a / b, a + b
'''
ORDER = FeatureViewSpec(
    name="order",
    source=ViewSource.REQUEST,
    transform="reqs:ratio",
    inputs=("a", "b"),
    fields=(FieldSpec(name="ratio"), FieldSpec(name="total")),
)
PASS = FeatureViewSpec(name="raw", source=ViewSource.REQUEST, inputs=("b",), fields=(FieldSpec(name="b"),))
CTX = {"a": 3.0, "b": 2.0}


@pytest.fixture
def parts(tmp_path: Path, clock: FakeClock) -> tuple[FeatureAssembler, InMemoryOnlineStore]:
    (tmp_path / "reqs.py").write_text(MODULE)
    views = compile_views((PROFILE, CLICKS, ORDER, PASS), str(tmp_path))
    store = InMemoryOnlineStore(views, ENTITIES, clock=clock)
    return FeatureAssembler(views, ["profile", "order", "clicks", "raw"], store), store


@pytest.fixture
def assembler(parts: tuple[FeatureAssembler, InMemoryOnlineStore]) -> FeatureAssembler:
    return parts[0]


@pytest.fixture
def store(parts: tuple[FeatureAssembler, InMemoryOnlineStore]) -> InMemoryOnlineStore:
    return parts[1]


def fill(assembler: FeatureAssembler, store: InMemoryOnlineStore, key: str, ctx: object, now: int) -> tuple:
    out = np.zeros(assembler.width, dtype=np.float32)
    flags = assembler.fill_one((store.row("user", key),), ctx, out, now)  # type: ignore[arg-type]
    return out.tolist(), flags


def test_columns_are_laid_out_view_after_view_in_the_given_order(assembler: FeatureAssembler) -> None:
    assert assembler.columns == (
        "profile.age", "profile.score", "order.ratio", "order.total", "clicks.n", "raw.b"
    )


def test_context_fields_are_the_request_inputs_once_each(assembler: FeatureAssembler) -> None:
    assert assembler.context_fields == ("a", "b")


def test_column_index_finds_qualified_names(assembler: FeatureAssembler) -> None:
    assert assembler.column_index(["clicks.n", "profile.age"]).tolist() == [4, 0]


def test_column_index_rejects_columns_not_served(assembler: FeatureAssembler) -> None:
    with pytest.raises(KeyError):
        assembler.column_index(["profile.height"])


def test_fresh_rows_are_served_with_request_features(
    assembler: FeatureAssembler, store: InMemoryOnlineStore, clock: FakeClock
) -> None:
    store.write("profile", "ann", [30.0, 0.75])
    store.write("clicks", "ann", [4.0])
    assert fill(assembler, store, "ann", CTX, clock.now_ns()) == ([30.0, 0.75, 1.5, 5.0, 4.0, 2.0], 0)


def test_unknown_entity_gets_declared_defaults_and_flag(
    assembler: FeatureAssembler, store: InMemoryOnlineStore, clock: FakeClock
) -> None:
    values, flags = fill(assembler, store, "nobody", CTX, clock.now_ns())
    assert values == [-1.0, 0.5, 1.5, 5.0, 7.0, 2.0]
    assert flags == Flag.UNKNOWN_ENTITY


def test_view_never_written_for_a_known_entity_is_stale(
    assembler: FeatureAssembler, store: InMemoryOnlineStore, clock: FakeClock
) -> None:
    store.write("profile", "ann", [30.0, 0.75])
    values, flags = fill(assembler, store, "ann", CTX, clock.now_ns())
    assert values[4] == 7.0
    assert flags == Flag.STALE_FEATURE


def test_row_exactly_ttl_old_is_still_fresh(
    assembler: FeatureAssembler, store: InMemoryOnlineStore, clock: FakeClock
) -> None:
    store.write("profile", "ann", [30.0, 0.75])
    store.write("clicks", "ann", [4.0])
    clock.advance(ns=TTL_NS)
    assert fill(assembler, store, "ann", CTX, clock.now_ns())[1] == 0


def test_row_older_than_ttl_is_served_as_defaults_and_flagged_stale(
    assembler: FeatureAssembler, store: InMemoryOnlineStore, clock: FakeClock
) -> None:
    store.write("profile", "ann", [30.0, 0.75])
    store.write("clicks", "ann", [4.0])
    clock.advance(ns=TTL_NS + 1)
    values, flags = fill(assembler, store, "ann", CTX, clock.now_ns())
    assert values[:2] == [-1.0, 0.5]
    assert flags == Flag.STALE_FEATURE


def test_view_without_ttl_never_goes_stale(
    assembler: FeatureAssembler, store: InMemoryOnlineStore, clock: FakeClock
) -> None:
    store.write("profile", "ann", [30.0, 0.75])
    store.write("clicks", "ann", [4.0])
    clock.advance(3600.0)
    store.write("profile", "ann", [30.0, 0.75])
    values, flags = fill(assembler, store, "ann", CTX, clock.now_ns())
    assert (values[4], flags) == (4.0, 0)


@pytest.mark.parametrize(
    ("ctx", "field"),
    [
        (None, "context"),
        ({"a": 1.0}, "context.b"),
        ({"a": "1.0", "b": 2.0}, "context.a"),
        ({"a": True, "b": 2.0}, "context.a"),
        ({"a": [1.0], "b": 2.0}, "context.a"),
        (["a", "b"], "context"),
    ],
)
def test_bad_context_for_one_entity_names_the_field(
    assembler: FeatureAssembler, store: InMemoryOnlineStore, ctx: object, field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        fill(assembler, store, "ann", ctx, 0)
    assert info.value.field == field


@pytest.mark.parametrize("value", [3, np.float32(3.0), np.int64(3)])
def test_numeric_context_types_are_accepted(
    assembler: FeatureAssembler, store: InMemoryOnlineStore, value: object
) -> None:
    assert fill(assembler, store, "ann", {"a": value, "b": 2.0}, 0)[0][2] == 1.5


def test_fill_many_rows_equal_fill_one(
    assembler: FeatureAssembler, store: InMemoryOnlineStore, clock: FakeClock
) -> None:
    store.write("profile", "old", [50.0, 0.1])
    clock.advance(ns=TTL_NS + 1)
    store.write("profile", "ann", [30.0, 0.75])
    store.write("clicks", "ann", [4.0])
    keys = ["ann", "nobody", "old"]
    a = np.array([3.0, 4.0, 5.0])
    now = clock.now_ns()
    many = np.zeros((3, assembler.width), dtype=np.float32)
    rows = store.rows("user", keys).reshape(-1, 1)
    flags = assembler.fill_many(rows, {"a": a, "b": 2.0}, many, now)
    singles = [fill(assembler, store, k, {"a": float(a[i]), "b": 2.0}, now) for i, k in enumerate(keys)]
    assert many.tolist() == [s[0] for s in singles]
    assert flags.tolist() == [int(s[1]) for s in singles]


@pytest.mark.parametrize(
    ("ctx", "field"),
    [
        (None, "context"),
        ({"a": [1.0, 2.0, 3.0]}, "context.b"),
        ({"a": [1.0, 2.0], "b": 2.0}, "context.a"),
        ({"a": [[1.0], [2.0], [3.0]], "b": 2.0}, "context.a"),
        ({"a": ["x", "y", "z"], "b": 2.0}, "context.a"),
    ],
)
def test_bad_context_for_many_entities_names_the_field(
    assembler: FeatureAssembler, store: InMemoryOnlineStore, ctx: object, field: str
) -> None:
    out = np.zeros((3, assembler.width), dtype=np.float32)
    with pytest.raises(ValidationError) as info:
        assembler.fill_many(np.zeros((3, 1), dtype=np.int64), ctx, out, 0)  # type: ignore[arg-type]
    assert info.value.field == field
