"""Public test doubles: a fake clock and runtimes with controlled behaviour.

``FakeClock`` is advanced by tests (never slept on).  ``SlowRuntime`` wraps a real runtime
and advances a fake clock by a chosen duration on each call, which is how a test makes a
model "slow" without sleeping; ``FailingRuntime`` raises or returns NaN on demand.
"""

from __future__ import annotations

import numpy as np

from tailguard.models.runtime import Runtime

__all__ = ["FailingRuntime", "FakeClock", "SlowRuntime"]


class FakeClock:
    """A manual monotonic clock in nanoseconds (starts at 1 s so that 0 stays a sentinel)."""

    def __init__(self, start_ns: int = 1_000_000_000, wall_start_ns: int = 1_700_000_000_000_000_000) -> None:
        self._now = start_ns
        self._wall_offset = wall_start_ns - start_ns

    def now_ns(self) -> int:
        """The fake monotonic time in ns."""
        return self._now

    def wall_ns(self) -> int:
        """The fake wall time in ns since the epoch."""
        return self._now + self._wall_offset

    def advance(self, seconds: float = 0.0, *, ns: int = 0) -> None:
        """Move time forward by ``seconds`` plus ``ns``."""
        step = round(seconds * 1e9) + ns
        if step < 0:
            raise ValueError("a monotonic clock does not go back")
        self._now += step


class SlowRuntime:
    """Delegates to ``inner`` and advances ``clock`` by ``delay_s`` per call (0 = instant)."""

    def __init__(self, inner: Runtime, clock: FakeClock, delay_s: float = 0.0) -> None:
        self.inner = inner
        self.clock = clock
        self.delay_s = delay_s
        self.kind = f"slow({inner.kind})"
        self.n_inputs = inner.n_inputs
        self.n_outputs = inner.n_outputs
        self.calls = 0

    def run(self, x: np.ndarray) -> np.ndarray:
        """Delegate to the inner runtime (see the class docstring for what changes)."""
        self.calls += 1
        self.clock.advance(self.delay_s)
        return self.inner.run(x)


class FailingRuntime:
    """Delegates to ``inner`` unless told to fail: ``mode`` is None, "raise" or "nan"."""

    def __init__(self, inner: Runtime, mode: str | None = "raise") -> None:
        self.inner = inner
        self.mode = mode
        self.kind = f"failing({inner.kind})"
        self.n_inputs = inner.n_inputs
        self.n_outputs = inner.n_outputs
        self.calls = 0

    def run(self, x: np.ndarray) -> np.ndarray:
        """Delegate to the inner runtime (see the class docstring for what changes)."""
        self.calls += 1
        if self.mode == "raise":
            raise RuntimeError("injected model failure")
        y = self.inner.run(x)
        if self.mode == "nan":
            y = y.copy()
            y[:] = np.nan
        return y
