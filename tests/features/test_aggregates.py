"""Incremental aggregates: hand-checked semantics, and bit-identity with their batch twins."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tailguard.features.aggregates import Ewma, EwmVar, LagReturn, WindowCount

SECOND = 1_000_000_000

alphas = st.floats(min_value=1e-3, max_value=1.0, exclude_min=False)
values = st.one_of(st.floats(min_value=-1e6, max_value=1e6), st.just(math.nan))
prices = st.floats(min_value=0.01, max_value=1e5)
horizons = st.integers(min_value=1, max_value=5 * SECOND)


@st.composite
def event_times(draw: st.DrawFn, min_size: int = 0, max_gap: int = 3 * SECOND) -> np.ndarray:
    """Non-decreasing int64 event times in ns, with repeated timestamps likely."""
    gaps = draw(
        st.lists(
            st.one_of(st.just(0), st.integers(min_value=0, max_value=max_gap)), min_size=min_size, max_size=60
        )
    )
    start = draw(st.integers(min_value=0, max_value=10**18))
    return start + np.cumsum(np.array(gaps, dtype=np.int64))


def fold(update: object, *columns: list[object]) -> np.ndarray:
    """Apply ``update`` event by event; the value after every event."""
    return np.array([update(*args) for args in zip(*columns, strict=True)], dtype=np.float64)  # type: ignore[operator]


# -- hand-checked semantics (from the documented formulas) --------------------------------------
def test_ewma_is_nan_before_any_event() -> None:
    assert math.isnan(Ewma(0.5).value)


def test_ewma_first_event_initialises_then_moves_by_alpha() -> None:
    e = Ewma(0.5)
    assert e.update(2.0) == 2.0
    assert e.update(4.0) == 3.0


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5])
def test_ewma_rejects_alpha_outside_unit_interval(alpha: float) -> None:
    with pytest.raises(ValueError):
        Ewma(alpha)


def test_ewmvar_is_zero_until_two_events() -> None:
    v = EwmVar(0.5)
    assert v.update(10.0) == 0.0
    # d = 2, incr = 1, s = 0.5 * (0 + 2 * 1) = 1
    assert v.update(12.0) == 1.0


@pytest.mark.parametrize("alpha", [0.0, 2.0])
def test_ewmvar_rejects_alpha_outside_unit_interval(alpha: float) -> None:
    with pytest.raises(ValueError):
        EwmVar(alpha)


def test_lag_return_is_nan_while_history_is_shorter_than_horizon() -> None:
    r = LagReturn(SECOND)
    r.update(0, 100.0)
    assert math.isnan(r.update(SECOND - 1, 101.0))


def test_lag_return_uses_the_last_price_at_or_before_the_horizon() -> None:
    r = LagReturn(SECOND)
    r.update(0, 100.0)
    r.update(SECOND // 2, 200.0)
    assert r.update(SECOND, 110.0) == 110.0 / 100.0 - 1.0
    assert r.update(SECOND + SECOND // 2, 400.0) == 400.0 / 200.0 - 1.0


def test_lag_return_rejects_non_positive_horizon() -> None:
    with pytest.raises(ValueError):
        LagReturn(0)


def test_window_count_window_excludes_its_left_edge() -> None:
    w = WindowCount(SECOND)
    w.update(0)
    assert w.update(SECOND - 1) == 2
    assert w.update(SECOND) == 2  # the event at 0 left the window (t - w, t]


def test_window_count_advances_time_without_counting_when_told() -> None:
    w = WindowCount(SECOND)
    w.update(0)
    assert w.update(2 * SECOND, count=False) == 0


def test_window_count_rejects_non_positive_window() -> None:
    with pytest.raises(ValueError):
        WindowCount(-1)


# -- incremental == batch, bit for bit ---------------------------------------------------------
@given(xs=st.lists(values, max_size=60), alpha=alphas)
def test_ewma_incremental_equals_batch(xs: list[float], alpha: float) -> None:
    online = fold(Ewma(alpha).update, xs)
    batch = Ewma.batch(np.array(xs, dtype=np.float64), alpha)
    assert np.array_equal(online, batch, equal_nan=True)


@given(xs=st.lists(values, max_size=60), alpha=alphas)
def test_ewmvar_incremental_equals_batch(xs: list[float], alpha: float) -> None:
    online = fold(EwmVar(alpha).update, xs)
    batch = EwmVar.batch(np.array(xs, dtype=np.float64), alpha)
    assert np.array_equal(online, batch, equal_nan=True)


@given(data=st.data(), horizon=horizons)
def test_lag_return_incremental_equals_batch(data: st.DataObject, horizon: int) -> None:
    ts = data.draw(event_times())
    ps = data.draw(st.lists(prices, min_size=len(ts), max_size=len(ts)))
    online = fold(LagReturn(horizon).update, ts.tolist(), ps)
    batch = LagReturn.batch(ts, np.array(ps, dtype=np.float64), horizon)
    assert np.array_equal(online, batch, equal_nan=True)


@given(data=st.data(), window=horizons)
def test_window_count_incremental_equals_batch(data: st.DataObject, window: int) -> None:
    ts = data.draw(event_times())
    mask = data.draw(st.lists(st.booleans(), min_size=len(ts), max_size=len(ts)))
    online = fold(WindowCount(window).update, ts.tolist(), mask)
    batch = WindowCount.batch(ts, window, np.array(mask, dtype=bool))
    assert np.array_equal(online, batch)


@given(ts=event_times(), window=horizons)
def test_window_count_batch_without_mask_counts_every_event(ts: np.ndarray, window: int) -> None:
    w = WindowCount(window)
    online = [w.update(t) for t in ts.tolist()]
    assert np.array_equal(np.array(online, dtype=np.int64), WindowCount.batch(ts, window))
