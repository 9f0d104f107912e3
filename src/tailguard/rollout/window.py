"""The guards' window: what the candidate did since the window opened, as plain counters.

The reply path records each candidate decision with ``record`` (three integer increments
and one list store: its total time goes into a fixed ring of the last ``capacity``
latencies); the side path records shadow runs (``record_run``) and output comparisons
(``record_diffs``).  ``figures`` turns the window into the numbers the guards read — p99
latency, error, fallback and divergence rates — on the side path; the controller opens a new
window every ``window_s``.

Owner: the engine's owner thread (no locks).
"""

from __future__ import annotations

import numpy as np

from tailguard.decision import Flag

__all__ = ["GuardWindow"]

_FAILED = int(Flag.MODEL_FAILED)


class GuardWindow:
    """Counters of one window (see the module docstring).  ``rung_index``: the candidate's rung
    (a decision answered below it is a fallback)."""

    def __init__(self, rung_index: int = 0, capacity: int = 4096) -> None:
        cap = 1 << max(0, (capacity - 1).bit_length())
        self.capacity = cap
        self._mask = cap - 1
        self.rung_index = rung_index
        self._lat: list[int] = [0] * cap
        self.reset()

    def reset(self) -> None:
        """Open a new, empty window."""
        self.n = 0  # candidate decisions (shadow: candidate runs)
        self.failed = 0
        self.fallbacks = 0
        self.compared = 0
        self.over_tolerance = 0
        self.sum_abs_diff = 0.0
        self.max_abs_diff = 0.0

    # -- reply path ------------------------------------------------------------------------------
    def record(self, flags: int, rung_index: int, total_ns: int) -> None:
        """One candidate decision: its flags, the rung that answered and its total time."""
        n = self.n
        self._lat[n & self._mask] = total_ns
        self.n = n + 1
        if flags & _FAILED:
            self.failed += 1
        if rung_index != self.rung_index:
            self.fallbacks += 1

    def record_error(self) -> None:
        """A candidate request that raised (no rung could answer)."""
        self.n += 1
        self.failed += 1

    # -- side path -------------------------------------------------------------------------------
    def record_run(self, elapsed_ns: int, failed: bool) -> None:
        """One shadow run of the candidate model: its inference time and whether it failed."""
        n = self.n
        self._lat[n & self._mask] = elapsed_ns
        self.n = n + 1
        if failed:
            self.failed += 1

    def record_diffs(self, diffs: np.ndarray, tolerance: float) -> None:
        """Compared outputs: ``diffs`` is ``|candidate - stable|`` per row (largest output)."""
        if not diffs.size:
            return
        self.compared += int(diffs.size)
        self.over_tolerance += int(np.count_nonzero(diffs > tolerance))
        self.sum_abs_diff += float(diffs.sum())
        self.max_abs_diff = max(self.max_abs_diff, float(diffs.max()))

    def p99_latency_s(self) -> float:
        """p99 of the recorded times (the last ``capacity`` of them), seconds; NaN when empty."""
        k = min(self.n, self.capacity)
        if k == 0:
            return float("nan")
        lat = np.fromiter(self._lat[:k] if self.n <= self.capacity else self._lat, dtype=np.int64, count=k)
        return float(np.percentile(lat, 99)) / 1e9

    def figures(self) -> dict[str, float]:
        """The window as numbers: samples, p99_latency_s, error_rate, fallback_rate, compared,
        divergence (share over the tolerance), mean_abs_diff and max_abs_diff."""
        n, c = self.n, self.compared
        return {
            "samples": float(n),
            "p99_latency_s": self.p99_latency_s(),
            "error_rate": self.failed / n if n else 0.0,
            "fallback_rate": self.fallbacks / n if n else 0.0,
            "compared": float(c),
            "divergence": self.over_tolerance / c if c else 0.0,
            "mean_abs_diff": self.sum_abs_diff / c if c else 0.0,
            "max_abs_diff": self.max_abs_diff,
        }
