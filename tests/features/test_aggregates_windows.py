"""Exact sliding windows (sum, mean, variance): semantics, exactness, late events, batch twins."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tailguard.features.aggregates import WindowCount, WindowMean, WindowSum, WindowVar

SECOND = 1_000_000_000

finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)
tiny = st.floats(min_value=-1e-300, max_value=1e-300)
values = st.one_of(finite, tiny, st.floats(), st.just(math.nan), st.just(math.inf))
windows = st.integers(min_value=1, max_value=5 * SECOND)


@st.composite
def series(
    draw: st.DrawFn, elements: st.SearchStrategy[float] = values, min_size: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing event times (repeats likely) and one value per event."""
    gaps = draw(st.lists(st.one_of(st.just(0), st.integers(0, 3 * SECOND)), min_size=min_size, max_size=50))
    ts = draw(st.integers(0, 10**18)) + np.cumsum(np.array(gaps, dtype=np.int64))
    xs = draw(st.lists(elements, min_size=len(ts), max_size=len(ts)))
    return ts, np.array(xs, dtype=np.float64)


def fold(agg: WindowSum, ts: np.ndarray, xs: np.ndarray) -> np.ndarray:
    return np.array([agg.update(t, x) for t, x in zip(ts.tolist(), xs.tolist(), strict=True)])


# -- semantics ----------------------------------------------------------------------------------
def test_sum_window_excludes_its_left_edge() -> None:
    w = WindowSum(SECOND)
    w.update(0, 1.0)
    assert w.update(SECOND - 1, 2.0) == 3.0
    assert w.update(SECOND, 4.0) == 6.0  # the event at 0 left (t - w, t]


def test_empty_window_reads_zero_sum_and_nan_mean() -> None:
    s, m = WindowSum(SECOND), WindowMean(SECOND)
    assert s.value == 0.0 and math.isnan(m.value)
    s.update(0, 5.0)
    assert s.update(3 * SECOND, math.nan) == 0.0  # time moved on, nothing inside


def test_sum_is_exact_where_a_running_float_sum_drifts() -> None:
    w = WindowSum(SECOND)
    w.update(0, 1e16)
    w.update(1, 1.0)
    # 1e16 leaves the window: a float accumulator reads (1e16 + 1) - 1e16 = 0.0 (1e16 + 1
    # rounds to 1e16); the exact sum of what is left is 1.
    assert w.update(SECOND, 0.0) == 1.0


def test_sum_is_the_correctly_rounded_exact_sum() -> None:
    xs = [0.1, 0.2, 0.3, 1e-20, 7.25]
    w = WindowSum(SECOND)
    for i, x in enumerate(xs):
        w.update(i, x)
    assert w.value == float(sum(Fraction(x) for x in xs)) == math.fsum(xs)


def test_mean_is_the_correctly_rounded_exact_mean() -> None:
    xs = [0.1, 0.2, 0.4]
    m = WindowMean(SECOND)
    for i, x in enumerate(xs):
        m.update(i, x)
    assert m.value == float(sum(Fraction(x) for x in xs) / 3)


def test_variance_matches_the_exact_sample_variance() -> None:
    xs = [1e9 + 1.0, 1e9 + 2.0, 1e9 + 4.0]  # large offset: the textbook float formula cancels
    v = WindowVar(SECOND)
    for i, x in enumerate(xs):
        v.update(i, x)
    assert v.value == float(Fraction(7, 3))  # numpy's two-pass var reads one ulp below
    assert v.std == math.sqrt(v.value)


def test_variance_is_nan_until_more_values_than_ddof() -> None:
    v0, v1 = WindowVar(SECOND, ddof=0), WindowVar(SECOND)
    assert v0.update(0, 3.0) == 0.0
    assert math.isnan(v1.update(0, 3.0))


def test_non_finite_values_are_not_folded_in() -> None:
    m = WindowMean(SECOND)
    m.update(0, 2.0)
    assert m.update(1, math.inf) == 2.0
    assert m.update(2, math.nan) == 2.0 and m.count == 1


def test_overflowing_sum_reads_infinity() -> None:
    w = WindowSum(SECOND)
    w.update(0, 1.5e308)
    assert w.update(1, 1.5e308) == math.inf


@pytest.mark.parametrize("cls", [WindowSum, WindowMean, WindowVar, WindowCount])
def test_windows_reject_non_positive_width(cls: type) -> None:
    with pytest.raises(ValueError):
        cls(0)


def test_variance_rejects_other_ddof() -> None:
    with pytest.raises(ValueError):
        WindowVar(SECOND, ddof=2)


# -- late events ---------------------------------------------------------------------------------
def test_a_late_event_inside_the_window_counts_as_if_in_order() -> None:
    late, ordered = WindowSum(SECOND), WindowSum(SECOND)
    for t, x in [(0, 1.0), (500, 4.0), (300, 2.0)]:
        late.update(t, x)
    for t, x in [(0, 1.0), (300, 2.0), (500, 4.0)]:
        ordered.update(t, x)
    assert late.value == ordered.value == 7.0
    # ... and it leaves the window at its own time, not at its arrival's.
    assert late.update(SECOND + 300, 0.0) == ordered.update(SECOND + 300, 0.0) == 4.0


def test_a_late_event_older_than_the_window_is_ignored() -> None:
    w = WindowSum(SECOND)
    w.update(2 * SECOND, 1.0)
    assert w.update(SECOND, 5.0) == 1.0


def test_window_count_counts_a_late_event_in_its_place() -> None:
    w = WindowCount(SECOND)
    w.update(0)
    w.update(600)
    assert w.update(300) == 3
    assert w.update(SECOND + 300) == 2  # 0 and 300 left; 600 and the new one stay


def test_window_count_ignores_a_late_event_outside_the_window() -> None:
    w = WindowCount(SECOND)
    w.update(2 * SECOND)
    assert w.update(0) == 1


@given(data=st.data(), window=windows)
def test_late_arrivals_within_the_window_give_the_in_order_state(data: st.DataObject, window: int) -> None:
    ts, xs = data.draw(series(finite, min_size=1))
    arrival = data.draw(st.permutations(range(len(ts))))
    online = WindowVar(window, ddof=0)
    for i in arrival:
        online.update(int(ts[i]), float(xs[i]))
    # Reference: the events that were still inside the window when they arrived, folded in
    # time order, then the window advanced to the latest time.
    kept, latest = [], -1
    for i in arrival:
        latest = max(latest, int(ts[i]))
        if ts[i] > latest - window:
            kept.append(i)
    reference = WindowVar(window, ddof=0)
    for i in sorted(kept, key=lambda k: (int(ts[k]), k)):
        reference.update(int(ts[i]), float(xs[i]))
    reference.update(latest, math.nan)
    assert online.count == reference.count
    assert np.array_equal([online.value], [reference.value], equal_nan=True)


# -- online == batch, bit for bit -----------------------------------------------------------------
@given(s=series(), window=windows)
def test_window_sum_incremental_equals_batch(s: tuple[np.ndarray, np.ndarray], window: int) -> None:
    ts, xs = s
    assert np.array_equal(fold(WindowSum(window), ts, xs), WindowSum.batch(ts, xs, window), equal_nan=True)


@given(s=series(), window=windows)
def test_window_mean_incremental_equals_batch(s: tuple[np.ndarray, np.ndarray], window: int) -> None:
    ts, xs = s
    assert np.array_equal(fold(WindowMean(window), ts, xs), WindowMean.batch(ts, xs, window), equal_nan=True)


@given(s=series(), window=windows, ddof=st.sampled_from([0, 1]))
def test_window_var_incremental_equals_batch(
    s: tuple[np.ndarray, np.ndarray], window: int, ddof: int
) -> None:
    ts, xs = s
    online = fold(WindowVar(window, ddof), ts, xs)
    assert np.array_equal(online, WindowVar.batch(ts, xs, window, ddof), equal_nan=True)


@given(s=series(finite), window=windows)
def test_window_var_is_never_negative(s: tuple[np.ndarray, np.ndarray], window: int) -> None:
    ts, xs = s
    out = fold(WindowVar(window), ts, xs)
    assert not (out < 0).any()
