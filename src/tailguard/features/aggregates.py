"""Incremental aggregates for stream transforms, each with its batch (whole-array) twin.

Every aggregate folds one event in O(1) (amortised for windows) with a fixed order of float
operations, so replaying the same events reproduces the same values bit for bit.  Each has a
``batch`` static method computing the value after every event of a whole series with numpy;
the property tests check that the two agree, which is what lets training sets be built from
history with the same semantics as serving.

Times are integer nanoseconds of event time.  ``Ewma``, ``EwmVar`` and ``LagReturn`` expect
events in non-decreasing event time (views using them keep the stream processor's default
late policy, ``drop``); ``WindowCount`` and the aggregates of the sibling modules accept a
late event (one older than the latest seen) and fold it in at its own time, so they suit
views declared ``late = "apply"``.

This module is the one import point for every aggregate; siblings hold the larger families:
``windows`` (exact sliding sum, mean, variance), ``decay`` (time-decayed counts, last N)
and ``sketch`` (HyperLogLog distinct counts).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque

import numpy as np

from tailguard.features.decay import DecayedCount, LastN
from tailguard.features.sketch import HyperLogLog, hash64
from tailguard.features.windows import WindowMean, WindowSum, WindowVar

__all__ = [
    "DecayedCount",
    "EwmVar",
    "Ewma",
    "HyperLogLog",
    "LagReturn",
    "LastN",
    "WindowCount",
    "WindowMean",
    "WindowSum",
    "WindowVar",
    "hash64",
]


class Ewma:
    """Exponentially weighted moving average per event: ``v += alpha * (x - v)``; the first
    event initialises ``v = x``.  ``value`` is NaN before any event."""

    __slots__ = ("alpha", "value")

    def __init__(self, alpha: float) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.value = math.nan

    def update(self, x: float) -> float:
        """Fold one event in; returns the new value."""
        v = self.value
        self.value = x if v != v else v + self.alpha * (x - v)
        return self.value

    @staticmethod
    def batch(x: np.ndarray, alpha: float) -> np.ndarray:
        """The value after every event of a whole series (the batch twin of ``update``)."""
        out = np.empty(len(x), dtype=np.float64)
        v = math.nan
        for i, xi in enumerate(x.astype(np.float64).tolist()):
            v = xi if v != v else v + alpha * (xi - v)
            out[i] = v
        return out


class EwmVar:
    """Exponentially weighted variance per event (West's incremental form):
    ``d = x - m; m += a*d; s = (1 - a) * (s + d * a * d)``.  0.0 before two events."""

    __slots__ = ("alpha", "mean", "n", "var")

    def __init__(self, alpha: float) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.mean = 0.0
        self.var = 0.0
        self.n = 0

    def update(self, x: float) -> float:
        """Fold one event in; returns the new value."""
        if self.n == 0:
            self.mean = x
        else:
            a = self.alpha
            d = x - self.mean
            incr = a * d
            self.mean = self.mean + incr
            self.var = (1.0 - a) * (self.var + d * incr)
        self.n += 1
        return self.var

    @staticmethod
    def batch(x: np.ndarray, alpha: float) -> np.ndarray:
        """The value after every event of a whole series (the batch twin of ``update``)."""
        out = np.empty(len(x), dtype=np.float64)
        mean = var = 0.0
        for i, xi in enumerate(x.astype(np.float64).tolist()):
            if i == 0:
                mean = xi
            else:
                d = xi - mean
                incr = alpha * d
                mean = mean + incr
                var = (1.0 - alpha) * (var + d * incr)
            out[i] = var
        return out


class LagReturn:
    """Simple return of a price over an event-time horizon: ``p_t / p_asof(t - h) - 1``, where
    ``p_asof`` is the last price at or before ``t - h``; NaN while history is shorter than h."""

    __slots__ = ("hist", "horizon_ns")

    def __init__(self, horizon_ns: int) -> None:
        if horizon_ns <= 0:
            raise ValueError("horizon must be positive")
        self.horizon_ns = horizon_ns
        self.hist: deque[tuple[int, float]] = deque()

    def update(self, ts_ns: int, price: float) -> float:
        """Fold one event in; returns the new value."""
        hist = self.hist
        hist.append((ts_ns, price))
        cutoff = ts_ns - self.horizon_ns
        # Keep exactly one entry at or before the cutoff (the as-of price), drop older ones.
        while len(hist) >= 2 and hist[1][0] <= cutoff:
            hist.popleft()
        first_ts, first_price = hist[0]
        return price / first_price - 1.0 if first_ts <= cutoff else math.nan

    @staticmethod
    def batch(ts_ns: np.ndarray, price: np.ndarray, horizon_ns: int) -> np.ndarray:
        """The value after every event of a whole series (the batch twin of ``update``)."""
        p = price.astype(np.float64)
        j = np.searchsorted(ts_ns, ts_ns - horizon_ns, side="right") - 1
        out = np.full(len(p), np.nan)
        ok = j >= 0
        out[ok] = p[ok] / p[j[ok]] - 1.0
        return out


class WindowCount:
    """Number of events in the event-time window ``(t - w, t]``, the current one included,
    where ``t`` is the latest event time seen.  A late event still inside the window is
    counted in its place; one older than the window is not counted."""

    __slots__ = ("now_ns", "times", "window_ns")

    def __init__(self, window_ns: int) -> None:
        if window_ns <= 0:
            raise ValueError("window must be positive")
        self.window_ns = window_ns
        self.times: deque[int] = deque()
        self.now_ns: int | None = None

    def update(self, ts_ns: int, count: bool = True) -> int:
        """Advance to ``ts_ns``; add the event to the window only if ``count``."""
        times = self.times
        now = self.now_ns
        if now is not None and ts_ns < now:
            if count and ts_ns > now - self.window_ns:
                times.insert(bisect_right(times, ts_ns), ts_ns)
            return len(times)
        self.now_ns = ts_ns
        if count:
            times.append(ts_ns)
        cutoff = ts_ns - self.window_ns
        while times and times[0] <= cutoff:
            times.popleft()
        return len(times)

    @staticmethod
    def batch(ts_ns: np.ndarray, window_ns: int, mask: np.ndarray | None = None) -> np.ndarray:
        """Window counts after every event; ``mask`` selects the events that count."""
        if mask is None:
            mask = np.ones(len(ts_ns), dtype=bool)
        counted = ts_ns[mask]
        # Counted events so far (by position: events sharing a timestamp arrive one by one).
        upto = np.cumsum(mask)
        since = np.searchsorted(counted, ts_ns - window_ns, side="right")
        return (upto - since).astype(np.int64)
