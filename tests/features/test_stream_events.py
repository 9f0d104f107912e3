"""The stream processor's per-event checks: time bounds, entity key types, input routing,
the watermark, stream sequences and event ids (each reason lands in its own bucket)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from streamkit import USERS_AND_SHOPS, compile_agg, sum_view

from tailguard.features.events import EventReason
from tailguard.features.store import InMemoryOnlineStore
from tailguard.features.stream import StreamProcessor
from tailguard.spec import Duration, FeatureViewSpec, FieldSpec, LatePolicy, StreamSpec
from tailguard.testing import FakeClock

ENTITIES = USERS_AND_SHOPS


def make(tmp_path: Path, clock: FakeClock, config: StreamSpec | None = None,
         **sum_kw: Any) -> tuple[StreamProcessor, InMemoryOnlineStore]:
    specs = (
        sum_view(inputs=("x",), **sum_kw),
        FeatureViewSpec(name="ys", entity="user", transform="agg:Y", inputs=("y",),
                        fields=(FieldSpec(name="y"),)),
        sum_view("shop_sums", "shop"),
    )
    views = compile_agg(tmp_path, specs)
    store = InMemoryOnlineStore(views, ENTITIES, clock=clock)
    return StreamProcessor(views, store, config or StreamSpec(), entities=ENTITIES, clock=clock), store


def test_event_times_outside_the_declared_bounds_are_rejected(tmp_path: Path, clock: FakeClock) -> None:
    p, _ = make(tmp_path, clock, StreamSpec(max_future=Duration(1.0), max_past=Duration(10.0)))
    now = clock.wall_ns()
    assert p.process({"user": "a", "ts_ns": now + 2_000_000_000, "x": 1.0}) is EventReason.FUTURE
    assert p.process({"user": "a", "ts_ns": now - 11_000_000_000, "x": 1.0}) is EventReason.PAST
    assert p.process({"user": "a", "ts_ns": now, "x": 1.0}) is None
    assert (p.statistics()["future"], p.statistics()["past"], p.applied) == (1, 1, 1)


@pytest.mark.parametrize("ts", [True, 1.5, "1"])
def test_an_event_time_that_is_not_an_int_is_the_wrong_type(
        tmp_path: Path, clock: FakeClock, ts: Any) -> None:
    p, _ = make(tmp_path, clock)
    assert p.process({"user": "a", "ts_ns": ts, "x": 1.0}) is EventReason.WRONG_TYPE


def test_entity_keys_of_the_wrong_type_are_rejected_and_numpy_ints_accepted(
        tmp_path: Path, clock: FakeClock) -> None:
    p, store = make(tmp_path, clock)
    assert p.process({"shop": "7", "ts_ns": 1, "x": 1.0}) is EventReason.WRONG_TYPE
    assert p.process({"user": 7, "ts_ns": 1, "x": 1.0}) is EventReason.WRONG_TYPE
    assert p.process({"shop": True, "ts_ns": 1, "x": 1.0}) is EventReason.WRONG_TYPE
    assert p.process({"shop": np.int64(7), "ts_ns": 1, "x": 2.0}) is None
    assert list(store.read("shop_sums", 7)) == [2.0, 1.0]


def test_a_view_with_inputs_is_updated_only_by_events_carrying_them(tmp_path: Path, clock: FakeClock) -> None:
    p, store = make(tmp_path, clock)
    p.process({"user": "a", "ts_ns": 1, "x": 2.0})
    p.process({"user": "a", "ts_ns": 2, "y": 5.0})
    assert list(store.read("sums", "a")) == [2.0, 1.0] and list(store.read("ys", "a")) == [5.0]
    assert p.process({"user": "a", "ts_ns": 3, "z": 1.0}) is None and p.ignored == 1


def test_an_event_with_no_entity_key_is_a_missing_field(tmp_path: Path, clock: FakeClock) -> None:
    p, _ = make(tmp_path, clock)
    assert p.process({"ts_ns": 1, "x": 1.0}) is EventReason.MISSING_FIELD


def test_an_event_behind_the_watermark_is_late_unless_the_view_applies_late_ones(
        tmp_path: Path, clock: FakeClock) -> None:
    p, store = make(tmp_path, clock, allowed_lateness=Duration(5e-9), late=LatePolicy.APPLY)
    p.process({"user": "a", "ts_ns": 100, "x": 1.0})
    assert p.process({"user": "a", "ts_ns": 97, "x": 1.0}) is None  # out of order, within lateness: applied
    assert p.process({"user": "a", "ts_ns": 90, "x": 1.0}) is EventReason.LATE  # behind the watermark
    assert list(store.read("sums", "a")) == [2.0, 2.0]
    assert p.late_applied == 1 and p.late == 1


def test_replayed_stream_sequences_and_repeated_ids_are_duplicates(tmp_path: Path, clock: FakeClock) -> None:
    p, store = make(tmp_path, clock, StreamSpec(event_id="id"))
    assert p.process({"user": "a", "id": "e1", "ts_ns": 1, "x": 1.0}, seq=5) is None
    assert p.process({"user": "a", "id": "e2", "ts_ns": 2, "x": 1.0}, seq=5) is EventReason.DUPLICATE
    assert p.process({"user": "a", "id": "e1", "ts_ns": 3, "x": 1.0}, seq=6) is EventReason.DUPLICATE
    assert p.process({"user": "a", "id": 3.5, "ts_ns": 4, "x": 1.0}) is EventReason.WRONG_TYPE
    assert list(store.read("sums", "a")) == [1.0, 1.0]
    assert p.statistics()["duplicate"] == 2 and p.last_seq == 6
