"""Transforms of the trading service (referenced from service.toml).

``TickFeatures`` is the stream transform of view ``ticks``: one state per instrument, folded
one tick at a time with tailguard's incremental aggregates (event time, O(1) per tick).
``quote_features`` is the request transform of view ``quote``: arithmetic on the current
quote, the same code for one instrument (floats) and for many (numpy arrays).

A tick is a mapping with ``ts_ns`` (event time), ``bid``, ``ask``, ``bid_size``, ``ask_size``
and ``trade_size`` (signed: >0 buyer-initiated, <0 seller-initiated, 0 for a quote update).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from tailguard.features.aggregates import Ewma, EwmVar, LagReturn, WindowCount

SECOND = 1_000_000_000
FIELDS = (
    "ret_1s",
    "ret_5s",
    "ret_30s",
    "vol_ewm_bps",
    "spread_ewm_bps",
    "imbalance_ewm",
    "trade_intensity",
    "flow_ewm",
)
INTENSITY_WINDOW_S = 5


class TickState:
    __slots__ = (
        "flow",
        "imbalance",
        "last_log_mid",
        "out",
        "r1",
        "r5",
        "r30",
        "spread",
        "trades",
        "var",
    )

    def __init__(self) -> None:
        self.r1 = LagReturn(1 * SECOND)
        self.r5 = LagReturn(5 * SECOND)
        self.r30 = LagReturn(30 * SECOND)
        self.var = EwmVar(0.05)
        self.spread = Ewma(0.1)
        self.imbalance = Ewma(0.1)
        self.trades = WindowCount(INTENSITY_WINDOW_S * SECOND)
        self.flow = Ewma(0.1)
        self.last_log_mid = math.nan
        self.out = [0.0] * len(FIELDS)


class TickFeatures:
    """Stream transform for view ``ticks``."""

    fields = FIELDS

    def new_state(self) -> TickState:
        return TickState()

    def update(self, s: TickState, ev: Mapping[str, Any]) -> None:
        ts = int(ev["ts_ns"])
        bid = float(ev["bid"])
        ask = float(ev["ask"])
        mid = 0.5 * (bid + ask)
        out = s.out
        out[0] = s.r1.update(ts, mid)
        out[1] = s.r5.update(ts, mid)
        out[2] = s.r30.update(ts, mid)
        log_mid = math.log(mid)
        if s.last_log_mid == s.last_log_mid:  # not NaN: we have a previous tick
            s.var.update((log_mid - s.last_log_mid) * 1e4)
        s.last_log_mid = log_mid
        out[3] = math.sqrt(s.var.var)
        out[4] = s.spread.update((ask - bid) / mid * 1e4)
        bs = float(ev["bid_size"])
        as_ = float(ev["ask_size"])
        out[5] = s.imbalance.update((bs - as_) / (bs + as_))
        trade = float(ev["trade_size"])
        out[6] = s.trades.update(ts, trade != 0.0) / INTENSITY_WINDOW_S
        out[7] = s.flow.update(trade)

    def values(self, s: TickState) -> list[float]:
        return s.out


def quote_features(bid: Any, ask: Any, bid_size: Any, ask_size: Any) -> tuple[Any, Any]:
    """Spread in bps and top-of-book imbalance of the current quote (floats or arrays)."""
    mid = 0.5 * (bid + ask)
    return (ask - bid) / mid * 1e4, (bid_size - ask_size) / (bid_size + ask_size)


def batch_tick_features(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """The values of ``TickFeatures`` after every tick of ONE instrument, computed over whole
    arrays with the aggregates' batch twins (used by tests to check online == batch)."""
    ts = columns["ts_ns"].astype(np.int64)
    bid = columns["bid"].astype(np.float64)
    ask = columns["ask"].astype(np.float64)
    mid = 0.5 * (bid + ask)
    out = np.empty((len(ts), len(FIELDS)), dtype=np.float64)
    out[:, 0] = LagReturn.batch(ts, mid, 1 * SECOND)
    out[:, 1] = LagReturn.batch(ts, mid, 5 * SECOND)
    out[:, 2] = LagReturn.batch(ts, mid, 30 * SECOND)
    # math.log, as the online path uses: numpy's vectorised log may differ in the last ulp.
    log_mid = np.array([math.log(v) for v in mid.tolist()])
    var = np.zeros(len(ts))
    if len(ts) > 1:
        var[1:] = EwmVar.batch((log_mid[1:] - log_mid[:-1]) * 1e4, 0.05)
    out[:, 3] = np.sqrt(var)
    out[:, 4] = Ewma.batch((ask - bid) / mid * 1e4, 0.1)
    bs = columns["bid_size"].astype(np.float64)
    as_ = columns["ask_size"].astype(np.float64)
    out[:, 5] = Ewma.batch((bs - as_) / (bs + as_), 0.1)
    trade = columns["trade_size"].astype(np.float64)
    out[:, 6] = WindowCount.batch(ts, INTENSITY_WINDOW_S * SECOND, trade != 0.0) / INTENSITY_WINDOW_S
    out[:, 7] = Ewma.batch(trade, 0.1)
    return out
