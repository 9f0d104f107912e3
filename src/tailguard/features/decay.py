"""Time-decayed counts and the last N values, in event time.

``DecayedCount`` weighs each event by ``2 ** (-age / half_life)``: a count that forgets at a
declared rate, with no window to store (O(1) state).  ``LastN`` keeps the N latest values
by event time.  Both take integer ns of event time; one owner thread per instance.  Both
have a ``batch`` twin computing the value after every event of a whole series in
non-decreasing time, with the same float operations in the same order (the property
tests check bit identity).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

__all__ = ["DecayedCount", "LastN"]


class DecayedCount:
    """``sum(w_i * 2 ** (-(t - t_i) / half_life))`` over the events so far, at the time ``t``
    of the latest event (0.0 before any).

    An in-order event decays the running value to its own time, then adds its weight:
    ``c = c * 2 ** (-(t_new - t) / h) + w``.  A late event (older than ``t``) adds its weight
    already decayed to ``t``: ``c += w * 2 ** (-(t - t_i) / h)``, so nothing is dropped and the
    value stays referenced at the latest time.  ``value_at(now_ns)`` decays it further (a read
    at decision time); it does not change the state."""

    __slots__ = ("half_life_ns", "t_ns", "value")

    def __init__(self, half_life_ns: int) -> None:
        if half_life_ns <= 0:
            raise ValueError("half-life must be positive")
        self.half_life_ns = half_life_ns
        self.value = 0.0
        self.t_ns: int | None = None

    def update(self, ts_ns: int, weight: float = 1.0) -> float:
        """Fold one event of ``weight`` in; returns the value at the latest event time."""
        t = self.t_ns
        if t is None:
            self.value = weight
            self.t_ns = ts_ns
        elif ts_ns >= t:
            # int / int: the exponent is the correctly rounded ratio, whatever the magnitudes.
            self.value = self.value * math.exp2((t - ts_ns) / self.half_life_ns) + weight
            self.t_ns = ts_ns
        else:
            self.value = self.value + weight * math.exp2((ts_ns - t) / self.half_life_ns)
        return self.value

    def value_at(self, now_ns: int) -> float:
        """The value decayed to ``now_ns`` (no decay for a time at or before the latest event)."""
        t = self.t_ns
        if t is None or now_ns <= t:
            return self.value
        return self.value * math.exp2((t - now_ns) / self.half_life_ns)

    @staticmethod
    def batch(ts_ns: np.ndarray, half_life_ns: int, weight: np.ndarray | None = None) -> np.ndarray:
        """The value after every event of a series in non-decreasing time (batch twin)."""
        times = ts_ns.astype(np.int64).tolist()
        ws = [1.0] * len(times) if weight is None else weight.astype(np.float64).tolist()
        out = np.empty(len(times), dtype=np.float64)
        c = 0.0
        prev: int | None = None
        exp2 = math.exp2
        for i, (t, w) in enumerate(zip(times, ws, strict=True)):
            c = w if prev is None else c * exp2((prev - t) / half_life_ns) + w
            prev = t
            out[i] = c
        return out


class LastN:
    """The ``n`` latest values by event time, most recent first, padded with ``fill``.

    Values are kept sorted by event time (equal times in arrival order); a late event is
    inserted in its place, or ignored when it is older than all ``n`` values kept."""

    __slots__ = ("fill", "items", "n")

    def __init__(self, n: int, fill: float = math.nan) -> None:
        if n <= 0:
            raise ValueError("n must be positive")
        self.n = n
        self.fill = fill
        self.items: deque[tuple[int, float]] = deque()

    def update(self, ts_ns: int, x: float) -> list[float]:
        """Fold one event in; returns the values, most recent first (``n`` of them)."""
        items = self.items
        if not items or ts_ns >= items[-1][0]:
            items.append((ts_ns, x))
        else:
            i = len(items)
            while i > 0 and items[i - 1][0] > ts_ns:
                i -= 1
            if i == 0 and len(items) >= self.n:
                return self.values()  # older than everything kept
            items.insert(i, (ts_ns, x))
        if len(items) > self.n:
            items.popleft()
        return self.values()

    def values(self) -> list[float]:
        """The values, most recent first, padded with ``fill`` to ``n``."""
        out = [x for _, x in reversed(self.items)]
        if len(out) < self.n:
            out.extend([self.fill] * (self.n - len(out)))
        return out

    @staticmethod
    def batch(x: np.ndarray, n: int, fill: float = math.nan) -> np.ndarray:
        """Row ``i``: the values after event ``i`` of an in-order series, most recent first
        (the batch twin: a sliding view over the series padded with ``n - 1`` fills)."""
        if len(x) == 0:
            return np.empty((0, n), dtype=np.float64)
        padded = np.concatenate((np.full(n - 1, fill, dtype=np.float64), x.astype(np.float64)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, n)
        out: np.ndarray = windows[:, ::-1].copy()
        return out
