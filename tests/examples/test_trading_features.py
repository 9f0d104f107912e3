"""The trading example's stream transform, fed tick by tick, equals its batch form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tailguard.features.transforms import load_module

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "trading"
features = load_module(str(EXAMPLE), "features")
ticks = load_module(str(EXAMPLE), "ticks")

SECOND = 1_000_000_000


@st.composite
def instrument_ticks(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """Ticks of one instrument: non-decreasing event times (repeats likely), cent prices."""
    n = draw(st.integers(min_value=1, max_value=60))
    gaps = draw(st.lists(st.one_of(st.just(0), st.integers(0, 10 * SECOND)), min_size=n, max_size=n))
    bid_cents = draw(st.lists(st.integers(100, 1_000_000), min_size=n, max_size=n))
    spread_cents = draw(st.lists(st.integers(1, 50), min_size=n, max_size=n))
    sizes = st.lists(st.integers(1, 1000).map(float), min_size=n, max_size=n)
    trades = st.lists(st.one_of(st.just(0.0), st.integers(-500, 500).map(float)), min_size=n, max_size=n)
    bid = np.array(bid_cents, dtype=np.float64) / 100.0
    return {
        "ts_ns": 1_700_000_000 * SECOND + np.cumsum(np.array(gaps, dtype=np.int64)),
        "bid": bid,
        "ask": (np.array(bid_cents) + np.array(spread_cents)).astype(np.float64) / 100.0,
        "bid_size": np.array(draw(sizes)),
        "ask_size": np.array(draw(sizes)),
        "trade_size": np.array(draw(trades)),
    }


def stream(cols: dict[str, np.ndarray]) -> np.ndarray:
    """Feed ``TickFeatures`` one tick at a time; the values after every tick."""
    tf = features.TickFeatures()
    state = tf.new_state()
    keys = ("ts_ns", "bid", "ask", "bid_size", "ask_size", "trade_size")
    rows: list[list[float]] = []
    for values in zip(*(cols[k].tolist() for k in keys), strict=True):
        event: dict[str, Any] = dict(zip(keys, values, strict=True))
        tf.update(state, event)
        rows.append(list(tf.values(state)))
    return np.array(rows, dtype=np.float64)


@given(cols=instrument_ticks())
def test_tick_features_stream_equals_batch_bit_for_bit(cols: dict[str, np.ndarray]) -> None:
    assert np.array_equal(stream(cols), features.batch_tick_features(cols), equal_nan=True)


def test_tick_features_stream_equals_batch_on_generated_ticks() -> None:
    # Generated mids include values where numpy's SIMD log and libm's log differ in the last
    # ulp (on CPUs with AVX-512), which the batch form must not be exposed to.
    cols = ticks.generate_ticks(120.0, n_instruments=1, seed=3)
    cols = {k: v for k, v in cols.items() if k not in ("symbol", "burst")}
    assert np.array_equal(stream(cols), features.batch_tick_features(cols), equal_nan=True)
