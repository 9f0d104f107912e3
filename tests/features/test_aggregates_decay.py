"""Time-decayed counts and last-N values: semantics, late events and batch twins."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tailguard.features.aggregates import DecayedCount, LastN

SECOND = 1_000_000_000


@st.composite
def event_times(draw: st.DrawFn) -> np.ndarray:
    gaps = draw(st.lists(st.one_of(st.just(0), st.integers(0, 10 * SECOND)), max_size=50))
    return draw(st.integers(0, 10**18)) + np.cumsum(np.array(gaps, dtype=np.int64))


# -- DecayedCount -------------------------------------------------------------------------------
def test_decayed_count_halves_over_one_half_life() -> None:
    c = DecayedCount(SECOND)
    c.update(0)
    assert c.update(SECOND) == 1.5  # the first event is worth 0.5 one half-life later


def test_decayed_count_reads_decay_to_a_later_time_without_changing_state() -> None:
    c = DecayedCount(SECOND)
    c.update(0, 4.0)
    assert c.value_at(2 * SECOND) == 1.0
    assert c.value == 4.0 and c.value_at(0) == 4.0


def test_decayed_count_adds_a_late_event_decayed_to_the_latest_time() -> None:
    c = DecayedCount(SECOND)
    c.update(2 * SECOND)
    assert c.update(SECOND) == 1.5
    assert c.t_ns == 2 * SECOND


def test_decayed_count_rejects_non_positive_half_life() -> None:
    with pytest.raises(ValueError):
        DecayedCount(0)


@given(ts=event_times(), half_life=st.integers(1, 60 * SECOND), data=st.data())
def test_decayed_count_incremental_equals_batch(ts: np.ndarray, half_life: int, data: st.DataObject) -> None:
    ws = np.array(data.draw(st.lists(st.floats(0, 1e6), min_size=len(ts), max_size=len(ts))))
    c = DecayedCount(half_life)
    online = np.array([c.update(t, w) for t, w in zip(ts.tolist(), ws.tolist(), strict=True)])
    assert np.array_equal(online, DecayedCount.batch(ts, half_life, ws))


@given(ts=event_times(), half_life=st.integers(1, 60 * SECOND))
def test_decayed_count_batch_defaults_to_unit_weights(ts: np.ndarray, half_life: int) -> None:
    c = DecayedCount(half_life)
    online = np.array([c.update(t) for t in ts.tolist()])
    assert np.array_equal(online, DecayedCount.batch(ts, half_life))


# -- LastN --------------------------------------------------------------------------------------
def test_last_n_is_most_recent_first_and_padded() -> None:
    last = LastN(3, fill=-1.0)
    assert last.update(0, 1.0) == [1.0, -1.0, -1.0]
    last.update(1, 2.0)
    last.update(2, 3.0)
    assert last.update(3, 4.0) == [4.0, 3.0, 2.0]


def test_last_n_inserts_a_late_value_in_event_time_order() -> None:
    last = LastN(3)
    last.update(0, 1.0)
    last.update(20, 3.0)
    assert last.update(10, 2.0) == [3.0, 2.0, 1.0]


def test_last_n_ignores_a_late_value_older_than_all_it_keeps() -> None:
    last = LastN(2)
    last.update(10, 1.0)
    last.update(20, 2.0)
    assert last.update(5, 9.0) == [2.0, 1.0]


def test_last_n_defaults_to_nan_fill() -> None:
    assert math.isnan(LastN(2).update(0, 1.0)[1])


def test_last_n_rejects_non_positive_n() -> None:
    with pytest.raises(ValueError):
        LastN(0)


@given(xs=st.lists(st.floats(allow_nan=False), max_size=40), n=st.integers(1, 6))
def test_last_n_incremental_equals_batch(xs: list[float], n: int) -> None:
    last = LastN(n, fill=0.0)
    online = np.array([last.update(i, x) for i, x in enumerate(xs)], dtype=np.float64).reshape(len(xs), n)
    assert np.array_equal(online, LastN.batch(np.array(xs, dtype=np.float64), n, fill=0.0))


@given(data=st.data(), n=st.integers(1, 6))
def test_last_n_state_does_not_depend_on_arrival_order(data: st.DataObject, n: int) -> None:
    times = data.draw(st.lists(st.integers(0, 10**6), min_size=1, max_size=30, unique=True))
    arrival = data.draw(st.permutations(times))
    shuffled, ordered = LastN(n), LastN(n)
    for t in arrival:
        shuffled.update(t, float(t))
    for t in sorted(times):
        ordered.update(t, float(t))
    assert shuffled.values() == ordered.values()
