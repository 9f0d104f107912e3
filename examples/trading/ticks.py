"""Synthetic ticks: several instruments, calm periods and bursts, a learnable signal.

Each instrument has a hidden order-flow *pressure* (an Ornstein-Uhlenbeck process, 3 s) and
a hidden *trend* (a slow one, 60 s).  Pressure tilts the book (bid vs ask size) and the
trade signs and drives the mid price, more strongly in bursts; the trend adds a persistent
drift visible only through past returns.  So book imbalance, trade flow and momentum carry
information about the next seconds' move — weak, noisy information, as in a real market.
Arrival rates switch between calm and burst regimes (a two-state Markov chain); bursts have
ten times the tick rate and twice the volatility.  Deterministic for a given seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SECOND = 1_000_000_000
SYMBOLS = ("AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA", "JPM", "XOM", "V", "KO", "PEP")


def generate_ticks(
    seconds: float = 600.0,
    *,
    n_instruments: int = 8,
    rate_hz: float = 20.0,
    seed: int = 0,
    start_ns: int = 1_700_000_000 * SECOND,
) -> dict[str, np.ndarray]:
    """Ticks of all instruments merged in event-time order, as columns.

    Columns: ``symbol`` (str), ``ts_ns`` (int64), ``bid``, ``ask`` (float64, 1-cent ticks),
    ``bid_size``, ``ask_size`` (float64, lots), ``trade_size`` (float64, signed, 0 = quote
    update), ``burst`` (bool, the hidden regime, for plots only).
    """
    rng = np.random.default_rng(seed)
    step = 0.01  # regime and rate resolution, seconds
    n_steps = int(seconds / step)
    parts: list[dict[str, np.ndarray]] = []
    for i in range(n_instruments):
        sym = SYMBOLS[i % len(SYMBOLS)] + ("" if i < len(SYMBOLS) else str(i // len(SYMBOLS)))
        # Regimes: calm <-> burst.
        burst = np.zeros(n_steps, dtype=bool)
        u = rng.random(n_steps)
        state = False
        for k in range(n_steps):  # a short loop at generation time, not on any hot path
            state = (u[k] > 0.02) if state else (u[k] < 0.002)
            burst[k] = state
        rate = rate_hz * (1.0 + 9.0 * burst)
        counts = rng.poisson(rate * step)
        n = int(counts.sum())
        step_of = np.repeat(np.arange(n_steps), counts)
        t = (step_of + rng.random(n)) * step
        order = np.argsort(t, kind="stable")
        t, step_of = t[order], step_of[order]
        b = burst[step_of]
        dt = np.diff(t, prepend=0.0).clip(1e-6)
        # Hidden pressure: OU with a 3 s time constant.
        tau = 3.0
        pressure = np.empty(n)
        p = 0.0
        decay = np.exp(-dt / tau)
        shock = rng.normal(size=n) * np.sqrt(1.0 - decay**2)
        for k in range(n):
            p = p * decay[k] + shock[k]
            pressure[k] = p
        # Hidden trend: a slow OU (60 s) seen only through past returns.
        trend = np.empty(n)
        q = 0.0
        decay_slow = np.exp(-dt / 60.0)
        shock_slow = rng.normal(size=n) * np.sqrt(1.0 - decay_slow**2)
        for k in range(n):
            q = q * decay_slow[k] + shock_slow[k]
            trend[k] = q
        vol = 2.0e-4 * (1.0 + b)  # per sqrt(second)
        # Pressure moves the price, more so in bursts; the trend adds a persistent drift.
        drift = 1.5e-4 * pressure * (1.0 + b) + 2.0e-4 * trend
        dlog = drift * dt + vol * np.sqrt(dt) * rng.normal(size=n)
        mid = (50.0 + 400.0 * rng.random()) * np.exp(np.cumsum(dlog))
        spread = np.maximum(0.01, np.round(mid * 2e-4 * (1.0 + b) * rng.lognormal(0.0, 0.3, n), 2))
        bid = np.round(mid - spread / 2, 2)
        ask = np.maximum(bid + 0.01, np.round(bid + spread, 2))
        bid_size = np.round(100.0 * np.exp(rng.normal(0.0, 0.6, n) + 0.5 * pressure))
        ask_size = np.round(100.0 * np.exp(rng.normal(0.0, 0.6, n) - 0.5 * pressure))
        is_trade = rng.random(n) < 0.4
        side = np.where(rng.normal(size=n) + 0.8 * pressure > 0, 1.0, -1.0)
        trade = np.where(is_trade, side * rng.geometric(0.05, n), 0.0)
        parts.append(
            {
                "symbol": np.full(n, sym, dtype=object),
                "ts_ns": start_ns + np.round(t * SECOND).astype(np.int64),
                "bid": bid,
                "ask": ask,
                "bid_size": np.maximum(bid_size, 1.0),
                "ask_size": np.maximum(ask_size, 1.0),
                "trade_size": trade,
                "burst": b,
            }
        )
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(cols["ts_ns"], kind="stable")
    return {k: v[order] for k, v in cols.items()}


def events(cols: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """The ticks as one mapping per event (the shape the stream transform takes)."""
    keys = ("symbol", "ts_ns", "bid", "ask", "bid_size", "ask_size", "trade_size")
    lists = [cols[k].tolist() for k in keys]
    return [dict(zip(keys, row, strict=True)) for row in zip(*lists, strict=True)]


def future_up(cols: dict[str, np.ndarray], horizon_s: float = 2.0) -> np.ndarray:
    """Label per tick: 1 if the instrument's mid ``horizon_s`` later is above the current mid
    (NaN-free: ticks without a full horizon ahead get -1 and are excluded by callers)."""
    label = np.full(len(cols["ts_ns"]), -1, dtype=np.int8)
    mid = 0.5 * (cols["bid"] + cols["ask"])
    for sym in np.unique(cols["symbol"]):
        idx = np.flatnonzero(cols["symbol"] == sym)
        ts = cols["ts_ns"][idx]
        j = np.searchsorted(ts, ts + int(horizon_s * SECOND), side="right") - 1
        ok = ts[-1] >= ts + int(horizon_s * SECOND)
        label[idx[ok]] = (mid[idx[j[ok]]] > mid[idx[ok]]).astype(np.int8)
    return label
