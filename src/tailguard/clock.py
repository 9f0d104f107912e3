"""Time as a dependency: the Clock protocol, the real monotonic clock and deadlines.

All internal times are integer nanoseconds from ``time.perf_counter_ns`` (monotonic, the
highest resolution the platform offers).  Budgets are relative durations; a deadline is an
absolute monotonic time in the owning process.  Tests inject ``tailguard.testing.FakeClock``
and advance it instead of sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "MonotonicClock", "ns_to_s", "s_to_ns"]


class Clock(Protocol):
    """A monotonic nanosecond clock plus wall time for records.  Any thread may call it."""

    def now_ns(self) -> int:
        """Monotonic time in integer nanoseconds (only differences are meaningful)."""
        ...

    def wall_ns(self) -> int:
        """Wall-clock time in nanoseconds since the Unix epoch (for records, not for budgets)."""
        ...


class MonotonicClock:
    """The real clock: ``perf_counter_ns`` for durations, ``time_ns`` for wall time."""

    __slots__ = ("now_ns", "wall_ns")

    def __init__(self) -> None:
        # Bound C functions: calling them costs one C call, no Python frame.
        self.now_ns = time.perf_counter_ns
        self.wall_ns = time.time_ns


def s_to_ns(seconds: float) -> int:
    """Seconds (float) to integer nanoseconds, rounded."""
    return round(seconds * 1e9)


def ns_to_s(ns: int) -> float:
    """Integer nanoseconds to float seconds."""
    return ns / 1e9
