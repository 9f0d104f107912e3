"""The stream processor: events folded per entity, written to the store, late events dropped."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamkit import LAST, SUM, USERS_AND_SHOPS, compile_agg

from tailguard.errors import ValidationError
from tailguard.features.events import EventReason
from tailguard.features.store import InMemoryOnlineStore
from tailguard.features.stream import StreamProcessor
from tailguard.spec import EventAction, FeatureViewSpec, FieldSpec, StreamSpec
from tailguard.testing import FakeClock

ENTITIES = USERS_AND_SHOPS
SHOP = FeatureViewSpec(name="shop", entity="shop", fields=(FieldSpec(name="x"),))  # written directly


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> InMemoryOnlineStore:
    return InMemoryOnlineStore(compile_agg(tmp_path, (SUM, LAST, SHOP)), ENTITIES, clock=clock)


@pytest.fixture
def stream(store: InMemoryOnlineStore) -> StreamProcessor:
    views = {name: store.table(name).view for name in ("sums", "last", "shop")}
    return StreamProcessor(views, store)


def values(store: InMemoryOnlineStore, view: str, key: str) -> list[float]:
    return store.table(view).f32[store.row("user", key)].tolist()


def test_an_event_updates_every_stream_view_of_its_entity(
    stream: StreamProcessor, store: InMemoryOnlineStore
) -> None:
    stream.apply("user", "ann", {"ts_ns": 1, "x": 2.0})
    stream.apply("user", "ann", {"ts_ns": 2, "x": 5.0})
    assert (values(store, "sums", "ann"), values(store, "last", "ann")) == ([7.0, 2.0], [5.0])


def test_entities_keep_separate_states(stream: StreamProcessor, store: InMemoryOnlineStore) -> None:
    stream.apply("user", "ann", {"ts_ns": 1, "x": 2.0})
    stream.apply("user", "bob", {"ts_ns": 1, "x": 3.0})
    assert (values(store, "sums", "ann"), values(store, "sums", "bob")) == ([2.0, 1.0], [3.0, 1.0])


def test_events_record_their_event_time(stream: StreamProcessor, store: InMemoryOnlineStore) -> None:
    stream.apply("user", "ann", {"ts_ns": 1234, "x": 2.0})
    assert store.table("sums").event_ns[store.row("user", "ann")] == 1234


def test_a_late_event_is_dropped_and_counted(stream: StreamProcessor, store: InMemoryOnlineStore) -> None:
    stream.apply("user", "ann", {"ts_ns": 10, "x": 2.0})
    stream.apply("user", "ann", {"ts_ns": 9, "x": 100.0})
    assert values(store, "sums", "ann") == [2.0, 1.0]
    assert stream.statistics()["late"] == 1


def test_an_event_at_the_same_time_is_not_late(stream: StreamProcessor, store: InMemoryOnlineStore) -> None:
    stream.apply("user", "ann", {"ts_ns": 10, "x": 2.0})
    stream.apply("user", "ann", {"ts_ns": 10, "x": 3.0})
    assert values(store, "sums", "ann") == [5.0, 2.0]


def test_lateness_is_judged_per_entity(stream: StreamProcessor, store: InMemoryOnlineStore) -> None:
    stream.apply("user", "ann", {"ts_ns": 10, "x": 2.0})
    stream.apply("user", "bob", {"ts_ns": 5, "x": 3.0})
    assert values(store, "sums", "bob") == [3.0, 1.0]


def test_a_late_event_is_not_counted_as_applied(stream: StreamProcessor) -> None:
    stream.apply("user", "ann", {"ts_ns": 10, "x": 2.0})
    stream.apply("user", "ann", {"ts_ns": 9, "x": 2.0})
    assert stream.statistics()["applied"] == 1


def test_event_without_time_is_counted_and_dead_lettered(stream: StreamProcessor) -> None:
    assert stream.apply("user", "ann", {"x": 2.0}) is EventReason.MISSING_FIELD
    assert stream.statistics()["missing_field"] == 1
    assert [d.reason for d in stream.dead_letters] == [EventReason.MISSING_FIELD]


def test_event_without_time_raises_under_the_raise_policy(store: InMemoryOnlineStore) -> None:
    views = {name: store.table(name).view for name in ("sums", "last", "shop")}
    strict = StreamProcessor(views, store, StreamSpec(on_bad=EventAction.RAISE))
    with pytest.raises(ValidationError) as info:
        strict.apply("user", "ann", {"x": 2.0})
    assert info.value.field == "ts_ns"


def test_entity_without_stream_view_is_rejected(stream: StreamProcessor) -> None:
    assert stream.apply("shop", 1, {"ts_ns": 1, "x": 2.0}) is EventReason.UNKNOWN_ENTITY
    assert stream.statistics()["unknown_entity"] == 1


def test_only_entities_with_transforms_are_routed(stream: StreamProcessor) -> None:
    assert stream.entities == ("user",)


def test_replay_applies_events_in_order_keyed_by_a_field(
    stream: StreamProcessor, store: InMemoryOnlineStore
) -> None:
    events = [{"ts_ns": t, "who": who, "x": float(t)} for t, who in [(1, "ann"), (2, "bob"), (3, "ann")]]
    assert stream.replay("user", "who", events) == 3
    assert (values(store, "last", "ann"), values(store, "last", "bob")) == ([3.0], [2.0])
