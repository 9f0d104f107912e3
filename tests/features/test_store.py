"""The embedded online store: defaults row, typed rows, float32 mirror, write times, growth."""

from __future__ import annotations

import numpy as np
import pytest

from tailguard.errors import ValidationError
from tailguard.features.store import InMemoryOnlineStore
from tailguard.features.view import FeatureView, compile_views
from tailguard.spec import EntitySpec, FeatureViewSpec, FieldSpec, ViewSource
from tailguard.testing import FakeClock

ENTITIES = (EntitySpec(name="user", key_dtype="str"), EntitySpec(name="shop", key_dtype="int64"))
PROFILE = FeatureViewSpec(
    name="profile",
    entity="user",
    fields=(
        FieldSpec(name="age", dtype="int32", default=-1.0),
        FieldSpec(name="score", dtype="float64", default=0.5),
        FieldSpec(name="vip", dtype="bool", default=0.0),
    ),
)
ACTIVITY = FeatureViewSpec(name="activity", entity="user", fields=(FieldSpec(name="clicks", default=3.0),))
SHOP = FeatureViewSpec(name="shop_stats", entity="shop", fields=(FieldSpec(name="rating", default=4.0),))
REQUEST = FeatureViewSpec(
    name="req", source=ViewSource.REQUEST, inputs=("x",), fields=(FieldSpec(name="x"),)
)


@pytest.fixture
def views() -> dict[str, FeatureView]:
    return compile_views((PROFILE, ACTIVITY, SHOP, REQUEST))


@pytest.fixture
def store(views: dict[str, FeatureView], clock: FakeClock) -> InMemoryOnlineStore:
    return InMemoryOnlineStore(views, ENTITIES, clock=clock)


def test_unknown_key_reads_the_declared_defaults(store: InMemoryOnlineStore) -> None:
    row = store.read("profile", "nobody")
    assert (int(row["age"]), float(row["score"]), bool(row["vip"])) == (-1, 0.5, False)


def test_unknown_key_maps_to_the_defaults_row(store: InMemoryOnlineStore) -> None:
    assert store.row("user", "nobody") == 0


def test_written_values_read_back_in_declared_dtypes(store: InMemoryOnlineStore) -> None:
    store.write("profile", "ann", [41.0, 0.25, 1.0])
    row = store.read("profile", "ann")
    assert row.dtype == store.table("profile").view.row_dtype
    assert (int(row["age"]), float(row["score"]), bool(row["vip"])) == (41, 0.25, True)


def test_write_mirrors_values_into_the_float32_model_input(store: InMemoryOnlineStore) -> None:
    store.write("profile", "ann", [41.0, 0.25, 1.0])
    t = store.table("profile")
    assert t.f32.dtype == np.float32
    assert t.f32[store.row("user", "ann")].tolist() == [41.0, 0.25, 1.0]


def test_read_returns_a_copy(store: InMemoryOnlineStore) -> None:
    store.write("activity", "ann", [7.0])
    row = store.read("activity", "ann")
    row["clicks"] = 99.0
    assert float(store.read("activity", "ann")["clicks"]) == 7.0


def test_writing_one_view_leaves_the_entitys_other_views_unwritten(store: InMemoryOnlineStore) -> None:
    store.write("profile", "ann", [41.0, 0.25, 1.0])
    assert store.age_ns("activity", "ann") is None
    assert float(store.read("activity", "ann")["clicks"]) == 3.0


def test_age_is_none_before_the_first_write(store: InMemoryOnlineStore) -> None:
    assert store.age_ns("activity", "ann") is None


def test_age_counts_clock_time_since_the_write(store: InMemoryOnlineStore, clock: FakeClock) -> None:
    store.write("activity", "ann", [1.0])
    clock.advance(ns=12_345)
    assert store.age_ns("activity", "ann") == 12_345


def test_event_time_is_recorded_and_defaults_to_write_time(
    store: InMemoryOnlineStore, clock: FakeClock
) -> None:
    store.write("activity", "ann", [1.0], event_ns=42)
    store.write("activity", "bob", [1.0])
    t = store.table("activity")
    assert t.event_ns[store.row("user", "ann")] == 42
    assert t.event_ns[store.row("user", "bob")] == clock.now_ns()


def test_write_of_wrong_length_names_the_view(store: InMemoryOnlineStore) -> None:
    with pytest.raises(ValidationError) as info:
        store.write("profile", "ann", [1.0])
    assert info.value.field == "profile"


def test_rejected_write_does_not_register_the_key(store: InMemoryOnlineStore) -> None:
    with pytest.raises(ValidationError):
        store.write("profile", "ann", [1.0])
    assert store.keys("user") == []


@pytest.mark.parametrize("key", [7, b"ann", None, 1.5])
def test_str_entity_rejects_keys_of_other_types(store: InMemoryOnlineStore, key: object) -> None:
    with pytest.raises(ValidationError) as info:
        store.row("user", key)
    assert info.value.field == "keys.user"


@pytest.mark.parametrize("key", ["7", True, 7.0])
def test_int64_entity_rejects_keys_of_other_types(store: InMemoryOnlineStore, key: object) -> None:
    with pytest.raises(ValidationError) as info:
        store.write("shop_stats", key, [1.0])
    assert info.value.field == "keys.shop"


def test_int64_entity_takes_numpy_integers_as_the_same_keys(store: InMemoryOnlineStore) -> None:
    store.write("shop_stats", np.int64(7), [4.5])
    assert store.row("shop", 7) == store.row("shop", np.int32(7)) != 0
    assert store.rows("shop", [np.int64(7), 8, np.int64(7)]).tolist() == [
        store.row("shop", 7), 0, store.row("shop", 7)
    ]
    assert store.keys("shop") == [7]
    assert type(store.keys("shop")[0]) is int


def test_rows_of_many_keys_are_zero_where_unknown(store: InMemoryOnlineStore) -> None:
    store.write("shop_stats", 10, [1.0])
    store.write("shop_stats", 20, [2.0])
    assert store.rows("shop", [20, 99, 10]).tolist() == [
        store.row("shop", 20), 0, store.row("shop", 10)
    ]


def test_rows_of_many_keys_rejects_one_bad_key(store: InMemoryOnlineStore) -> None:
    with pytest.raises(ValidationError):
        store.rows("shop", [1, "2"])


def test_read_many_gathers_rows_in_key_order(store: InMemoryOnlineStore) -> None:
    store.write("shop_stats", 1, [1.5])
    store.write("shop_stats", 2, [2.5])
    assert store.read_many("shop_stats", [2, 3, 1])["rating"].tolist() == [2.5, 4.0, 1.5]


def test_write_many_equals_writing_each_row(views: dict[str, FeatureView], clock: FakeClock) -> None:
    keys = ["a", "b", "c"]
    values = np.array([[1.0, 0.1, 0.0], [2.0, 0.2, 1.0], [3.0, 0.3, 0.0]])
    one, many = (InMemoryOnlineStore(views, ENTITIES, clock=clock) for _ in range(2))
    for k, v in zip(keys, values, strict=True):
        one.write("profile", k, v)
    many.write_many("profile", keys, values)
    assert np.array_equal(one.read_many("profile", keys), many.read_many("profile", keys))
    assert np.array_equal(one.table("profile").f32, many.table("profile").f32)


def test_write_many_accepts_structured_rows(store: InMemoryOnlineStore) -> None:
    rows = np.zeros(2, dtype=store.table("profile").view.row_dtype)
    rows["age"] = [30, 40]
    store.write_many("profile", ["a", "b"], rows)
    assert store.read_many("profile", ["b", "a"])["age"].tolist() == [40, 30]


def test_write_many_rejects_values_of_the_wrong_shape(store: InMemoryOnlineStore) -> None:
    with pytest.raises(ValidationError) as info:
        store.write_many("profile", ["a", "b"], np.zeros((2, 2)))
    assert info.value.field == "profile"


def test_growth_keeps_every_written_row(views: dict[str, FeatureView], clock: FakeClock) -> None:
    store = InMemoryOnlineStore(views, ENTITIES, clock=clock, capacity=2)
    for i in range(50):
        store.write("activity", f"u{i}", [float(i)])
    assert store.read_many("activity", [f"u{i}" for i in range(50)])["clicks"].tolist() == [
        float(i) for i in range(50)
    ]


def test_growth_keeps_unwritten_rows_at_defaults(views: dict[str, FeatureView], clock: FakeClock) -> None:
    store = InMemoryOnlineStore(views, ENTITIES, clock=clock, capacity=2)
    for i in range(10):
        store.write("activity", f"u{i}", [float(i)])
    assert float(store.read("profile", "u9")["score"]) == 0.5
    assert store.age_ns("profile", "u9") is None


def test_statistics_count_entities_and_writes(store: InMemoryOnlineStore) -> None:
    store.write("activity", "a", [1.0])
    store.write("activity", "a", [2.0])
    store.write_many("shop_stats", [1, 2, 3], np.ones((3, 1)))
    stats = store.statistics()
    assert stats["entities"] == {"user": 1, "shop": 3}
    assert stats["writes"] == 5


def test_request_views_are_not_stored(store: InMemoryOnlineStore) -> None:
    with pytest.raises(KeyError):
        store.table("req")
