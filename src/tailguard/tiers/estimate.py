"""How long the remote tier takes: a high quantile of its recent round trips.

``RoundTripEstimate`` keeps the last ``window`` observed round trips (ns, the caller's clock,
from just before the call to just after the reply) in arrival order and, beside them, the
same values sorted, so the quantile is one index into a list: an observation costs one
``bisect.insort`` and, once the window is full, one deletion (O(window) memory moves of
machine words, well under a microsecond for a few hundred entries); reading the estimate
costs an index and a comparison.

Observations older than ``max_age_s`` are dropped when the estimate is read, so a remote
that was slow once — and is then no longer called, because every budget looked too tight
for it — is tried again after ``max_age_s``: the estimate falls back to the ``prior``.
Until ``min_samples`` observations are held the estimate is the larger of the prior and
the slowest one held (few samples say little about a p99, the prior stays the floor).

A call that timed out is recorded with the time it waited (a lower bound of its round
trip): it pushes the estimate up, which is the direction a timeout should move it.

Owned by one thread (the tiered engine's owner); no locks.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from typing import Any

__all__ = ["RoundTripEstimate"]


class RoundTripEstimate:
    """A sliding-window quantile of round-trip times (see the module docstring).

    ``prior_s``: the estimate while too few observations are held.  ``quantile``: in (0, 1],
    e.g. 0.99.  ``window``: observations kept.  ``min_samples``: observations needed before
    the window's quantile alone is trusted.  ``max_age_s``: older observations are dropped
    (0: never).
    """

    __slots__ = ("_index", "_max_age_ns", "_order", "_sorted", "min_samples", "prior_ns", "quantile",
                 "window")

    def __init__(self, prior_s: float, *, quantile: float = 0.99, window: int = 256, min_samples: int = 16,
                 max_age_s: float = 10.0) -> None:
        if not prior_s >= 0 or not 0.0 < quantile <= 1.0:
            raise ValueError("prior_s must be >= 0 and quantile in (0, 1]")
        if window < 1 or min_samples < 1 or max_age_s < 0:
            raise ValueError("window and min_samples must be >= 1, max_age_s >= 0")
        self.prior_ns = round(prior_s * 1e9)
        self.quantile = quantile
        self.window = window
        self.min_samples = min(min_samples, window)
        self._max_age_ns = round(max_age_s * 1e9)
        self._order: deque[tuple[int, int]] = deque()  # (observed at ns, round trip ns), oldest first
        self._sorted: list[int] = []
        self._index = self._quantile_index(0)

    def _quantile_index(self, n: int) -> int:
        # The nearest-rank quantile: the smallest value with at least q*n values at or below it.
        return max(0, math.ceil(self.quantile * n) - 1)

    def observe(self, round_trip_ns: int, now_ns: int) -> None:
        """Record one round trip (ns) that ended at ``now_ns`` (the owner's clock)."""
        order, srt = self._order, self._sorted
        order.append((now_ns, round_trip_ns))
        bisect.insort(srt, round_trip_ns)
        if len(order) > self.window:
            self._drop_oldest()
        self._index = self._quantile_index(len(srt))

    def _drop_oldest(self) -> None:
        _, old = self._order.popleft()
        srt = self._sorted
        del srt[bisect.bisect_left(srt, old)]

    def estimate_ns(self, now_ns: int) -> int:
        """The round trip to plan for, in ns (drops observations older than ``max_age_s`` first)."""
        order = self._order
        if order and self._max_age_ns and order[0][0] < now_ns - self._max_age_ns:
            limit = now_ns - self._max_age_ns
            while order and order[0][0] < limit:
                self._drop_oldest()
            self._index = self._quantile_index(len(self._sorted))
        srt = self._sorted
        n = len(srt)
        if n >= self.min_samples:
            return srt[self._index]
        if n:
            return max(self.prior_ns, srt[-1])
        return self.prior_ns

    def __len__(self) -> int:
        return len(self._sorted)

    def clear(self) -> None:
        """Forget every observation (the estimate returns to the prior)."""
        self._order.clear()
        self._sorted.clear()
        self._index = self._quantile_index(0)

    def statistics(self, now_ns: int) -> dict[str, Any]:
        """The estimate (µs), how many observations back it, and their median and maximum (µs)."""
        est = self.estimate_ns(now_ns)
        srt = self._sorted
        return {
            "estimate_us": est / 1e3,
            "samples": len(srt),
            "median_us": srt[len(srt) // 2] / 1e3 if srt else None,
            "max_us": srt[-1] / 1e3 if srt else None,
            "prior_us": self.prior_ns / 1e3,
            "quantile": self.quantile,
        }
