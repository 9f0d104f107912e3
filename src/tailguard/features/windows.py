"""Sliding event-time windows with exact sums: count-aware sum, mean and variance.

A window at event time ``t`` holds the events with times in ``(t - w, t]``.  Its sums are
kept **exactly**, as integers: every finite float is an integer multiple of a power of two,
so each value is stored as ``x * 2**E`` (an int) for a common exponent ``E`` that only grows
(rare rescales when a value with more fractional bits arrives).  Adding and evicting are
then exact integer operations, and a read divides two integers once, which CPython rounds
correctly.  Consequences:

* no cancellation or drift, however long the stream runs (a running float sum with
  subtract-on-evict loses precision without bound; Welford-style removal does too);
* the value is a function of the window's *set* of events, not of the order they were
  folded in, so the batch twin (prefix sums and differences) agrees bit for bit, and an
  event applied late, within the window, gives the same value as if it had come in order;
* the cost is a few hundred nanoseconds per event for prices with a handful of decimals
  (ints of ~64-128 bits), more for values spanning many binary orders of magnitude.

Non-finite values (NaN, ±inf) are not folded in: they advance the window's time only (they
cannot be represented exactly and would poison every later value).  An overflowing result
reads as ±inf.  One owner thread per instance; times are integer ns of event time.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from itertools import accumulate

import numpy as np

__all__ = ["WindowMean", "WindowSum", "WindowVar"]


def ratio(num: int, den: int) -> float:
    """``num / den`` correctly rounded (CPython's int true division); ±inf on overflow."""
    try:
        return num / den
    except OverflowError:
        return math.inf if (num > 0) == (den > 0) else -math.inf


def _exponent(x: float) -> tuple[int, int]:
    """``(n, k)`` with ``x == n / 2**k`` exactly (x finite)."""
    n, d = x.as_integer_ratio()
    return n, d.bit_length() - 1


class WindowSum:
    """Exact sum of the finite values in the event-time window ``(t - w, t]``; 0.0 when empty.

    ``update(ts_ns, x)`` folds one event in and returns the value at the window's time
    (the largest event time seen).  An event older than that time is a late event: it is
    folded in if it still falls inside the window, and ignored otherwise."""

    __slots__ = ("count", "exp", "now_ns", "s1", "times", "vals", "window_ns")

    def __init__(self, window_ns: int) -> None:
        if window_ns <= 0:
            raise ValueError("window must be positive")
        self.window_ns = window_ns
        self.times: deque[int] = deque()
        self.vals: deque[int] = deque()
        self.exp = 0  # every stored int is value * 2**exp
        self.s1 = 0
        self.count = 0
        self.now_ns: int | None = None

    # -- folding ---------------------------------------------------------------------
    def _scaled(self, x: float) -> int:
        n, k = _exponent(x)
        if k > self.exp:
            self._rescale(k - self.exp)
        return n << (self.exp - k)

    def _rescale(self, shift: int) -> None:
        # Rare: the exponent only grows, at most ~1100 times over the life of the window.
        self.exp += shift
        self.vals = deque(v << shift for v in self.vals)
        self.s1 <<= shift
        self._rescale_more(shift)

    def _rescale_more(self, shift: int) -> None:
        """Subclasses rescale their extra sums here."""

    def _add(self, v: int) -> None:
        self.s1 += v

    def _remove(self, v: int) -> None:
        self.s1 -= v

    def _fold(self, ts_ns: int, x: float) -> None:
        now = self.now_ns
        if now is None or ts_ns >= now:
            now = self.now_ns = ts_ns
            cutoff = now - self.window_ns
            times, vals = self.times, self.vals
            while times and times[0] <= cutoff:
                times.popleft()
                self._remove(vals.popleft())
                self.count -= 1
            if x - x == 0.0:  # finite (NaN and ±inf give NaN)
                v = self._scaled(x)
                times.append(ts_ns)
                self.vals.append(v)
                self._add(v)
                self.count += 1
        elif ts_ns > now - self.window_ns and x - x == 0.0:
            # Late but inside the window: insert in time order (after equal times), so
            # eviction from the left stays correct.
            v = self._scaled(x)
            i = bisect_right(self.times, ts_ns)
            self.times.insert(i, ts_ns)
            self.vals.insert(i, v)
            self._add(v)
            self.count += 1

    def update(self, ts_ns: int, x: float) -> float:
        """Fold one event in; returns the new value."""
        self._fold(ts_ns, x)
        return self.value

    @property
    def value(self) -> float:
        """The window's current value."""
        return ratio(self.s1, 1 << self.exp)

    # -- batch twin ------------------------------------------------------------------
    @staticmethod
    def _prefix(
        ts_ns: np.ndarray, x: np.ndarray, window_ns: int
    ) -> tuple[list[int], list[int], int, np.ndarray, np.ndarray]:
        """What the batch twins difference: exact prefix sums of the values (ints at one
        common exponent), the scaled values, that exponent, prefix counts of finite values
        and the first index inside each event's window."""
        xs = x.astype(np.float64).tolist()
        parts = [_exponent(v) if math.isfinite(v) else (0, 0) for v in xs]
        exp = max((k for _, k in parts), default=0)
        scaled = [n << (exp - k) for n, k in parts]
        prefix = list(accumulate(scaled, initial=0))
        counts = np.concatenate(([0], np.cumsum(np.isfinite(x))))
        start = np.searchsorted(ts_ns, ts_ns - window_ns, side="right")
        return prefix, scaled, exp, counts, start

    @staticmethod
    def batch(ts_ns: np.ndarray, x: np.ndarray, window_ns: int) -> np.ndarray:
        """The value after every event of a series in non-decreasing time (batch twin)."""
        prefix, _, exp, _, start = WindowSum._prefix(ts_ns, x, window_ns)
        den = 1 << exp
        return np.array(
            [ratio(prefix[i + 1] - prefix[s], den) for i, s in enumerate(start.tolist())], dtype=np.float64
        )


class WindowMean(WindowSum):
    """Mean of the finite values in the window ``(t - w, t]``, correctly rounded from the
    exact sum; NaN when the window holds no value."""

    __slots__ = ()

    @property
    def value(self) -> float:
        """The window's current value."""
        return ratio(self.s1, self.count << self.exp) if self.count else math.nan

    @staticmethod
    def batch(ts_ns: np.ndarray, x: np.ndarray, window_ns: int) -> np.ndarray:
        """The value after every event of a series in non-decreasing time (batch twin)."""
        prefix, _, exp, counts, start = WindowSum._prefix(ts_ns, x, window_ns)
        out = np.empty(len(start), dtype=np.float64)
        for i, s in enumerate(start.tolist()):
            n = int(counts[i + 1] - counts[s])
            out[i] = ratio(prefix[i + 1] - prefix[s], n << exp) if n else math.nan
        return out


class WindowVar(WindowSum):
    """Variance of the finite values in the window ``(t - w, t]``, from exact sums of x and
    x² (``(n*S2 - S1**2) / (n * (n - ddof))``, one rounding); NaN while ``n <= ddof``.
    ``ddof=1`` (the default) is the sample variance; volatility is ``math.sqrt(value)``."""

    __slots__ = ("ddof", "s2")

    def __init__(self, window_ns: int, ddof: int = 1) -> None:
        super().__init__(window_ns)
        if ddof not in (0, 1):
            raise ValueError("ddof must be 0 or 1")
        self.ddof = ddof
        self.s2 = 0

    def _rescale_more(self, shift: int) -> None:
        self.s2 <<= 2 * shift

    def _add(self, v: int) -> None:
        self.s1 += v
        self.s2 += v * v

    def _remove(self, v: int) -> None:
        self.s1 -= v
        self.s2 -= v * v

    @property
    def value(self) -> float:
        """The window's current value."""
        n = self.count
        if n <= self.ddof:
            return math.nan
        return ratio(n * self.s2 - self.s1 * self.s1, (n * (n - self.ddof)) << (2 * self.exp))

    @property
    def std(self) -> float:
        """Square root of the variance (the volatility), correctly rounded from it."""
        return math.sqrt(self.value)

    @staticmethod
    def batch(ts_ns: np.ndarray, x: np.ndarray, window_ns: int, ddof: int = 1) -> np.ndarray:
        """The value after every event of a series in non-decreasing time (batch twin)."""
        p1, scaled, exp, counts, start = WindowSum._prefix(ts_ns, x, window_ns)
        p2 = list(accumulate((v * v for v in scaled), initial=0))
        out = np.empty(len(start), dtype=np.float64)
        for i, s in enumerate(start.tolist()):
            n = int(counts[i + 1] - counts[s])
            if n <= ddof:
                out[i] = math.nan
                continue
            s1 = p1[i + 1] - p1[s]
            s2 = p2[i + 1] - p2[s]
            out[i] = ratio(n * s2 - s1 * s1, (n * (n - ddof)) << (2 * exp))
        return out
