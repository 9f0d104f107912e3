"""Scheduler configuration: priority classes, their queue policies, rate limits and reasons.

Everything here is a frozen value built once when the server starts (from the service spec)
and read by the scheduler on its owner thread.  Durations are integer nanoseconds (``*_ns``);
the spec's float seconds are converted once, at the boundary, with ``clock.s_to_ns``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tailguard.spec import OnTimeout

__all__ = ["ClassPolicy", "OnTimeout", "RateLimit", "Reason", "SchedulerConfig"]


class Reason(enum.Enum):
    """Why a request did not get the normal path.  Values are stable wire and metric labels."""

    #: Its class queue held ``max_queue_size`` requests (at the door).
    QUEUE_FULL = "queue_full"
    #: Its client's token bucket was empty (at the door).
    RATE_LIMITED = "rate_limited"
    #: Admission predicted it would finish after its deadline at its start rung (at the door).
    PREDICTED_LATE = "predicted_late"
    #: While queued it could no longer finish in time at any queued (model) rung.
    EXPIRED = "expired"
    #: Global overload (``max_total_queued``): shed from the queue, or refused at the door
    #: when no lower-class request could be shed for it.
    SHED_OVERLOAD = "shed_overload"
    #: The scheduler is closed or drained (shutdown).
    DRAINING = "draining"


@dataclass(frozen=True, slots=True)
class ClassPolicy:
    """One priority class: ``level`` 1 is the highest; ``budget_ns`` is the default relative
    deadline (a request may shorten it, never lengthen it); at most ``max_queue_size`` of its
    requests wait at once; ``on_timeout`` says whether a request that cannot make its deadline
    is degraded to a cheaper rung or rejected."""

    name: str
    level: int
    budget_ns: int
    max_queue_size: int = 1024
    on_timeout: OnTimeout = OnTimeout.DEGRADE

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a priority class needs a name")
        if self.level < 1:
            raise ValueError(f"class {self.name!r}: level must be >= 1 (1 is the highest)")
        if self.budget_ns < 0:
            raise ValueError(f"class {self.name!r}: budget_ns must be >= 0")
        if self.max_queue_size < 1:
            raise ValueError(f"class {self.name!r}: max_queue_size must be >= 1")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket per client id: ``rate_per_s`` requests per second on average, bursts of
    up to ``burst`` requests."""

    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        if not self.rate_per_s > 0.0:
            raise ValueError("rate_per_s must be > 0")
        if self.burst < 1:
            raise ValueError("burst must be >= 1")

    @property
    def interval_ns(self) -> int:
        """Nanoseconds per token (>= 1)."""
        return max(1, round(1e9 / self.rate_per_s))


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """How the server schedules requests (Triton's vocabulary where it has a word).

    ``classes`` in any order (the scheduler orders them by level); ladder rungs are
    ``0 .. n_rungs - 1`` with 0 the best and most expensive; ``cheap_rungs`` cost about
    nothing (last good answer, declared default) and may answer at the door, bypassing the
    queue; every other rung is a *model* rung and is served in batches of at most
    ``max_batch_size`` rows.  A batch may wait up to ``max_queue_delay_ns`` to grow (0: never
    waits).  A lower class whose oldest request waited over ``starvation_guard_ns`` is served
    next, at most one batch per interval (0 disables the guard: strict priority).  At most
    ``max_total_queued`` requests wait over all classes; a higher-class arrival sheds the
    newest lower-class request when that bound is reached.  ``rate_limit`` applies per client
    id.  A batch of a lower class is grown only while its expected time stays within
    ``batch_share`` of the tightest budget of the classes above it: requests are not read
    while a batch runs, so this bounds how long a higher-class arrival can wait behind it.
    Retry-after hints are at least ``retry_after_floor_ns`` (except rate-limit ones, which
    say exactly when the next token comes).  ``default_class`` names the class of requests that
    name none (None: the first of ``classes``).
    """

    classes: tuple[ClassPolicy, ...]
    n_rungs: int
    cheap_rungs: frozenset[int] = frozenset()
    max_batch_size: int = 64
    max_queue_delay_ns: int = 0
    starvation_guard_ns: int = 5_000_000
    max_total_queued: int = 4096
    rate_limit: RateLimit | None = None
    retry_after_floor_ns: int = 1_000_000
    default_class: str | None = None
    batch_share: float = 0.5

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError("at least one priority class is needed")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"priority class names must be distinct: {names}")
        levels = [c.level for c in self.classes]
        if len(set(levels)) != len(levels):
            raise ValueError(f"priority levels must be distinct: {levels}")
        if self.n_rungs < 1:
            raise ValueError("n_rungs must be >= 1")
        if any(not 0 <= r < self.n_rungs for r in self.cheap_rungs):
            raise ValueError(f"cheap_rungs {sorted(self.cheap_rungs)} outside 0..{self.n_rungs - 1}")
        if len(self.cheap_rungs) >= self.n_rungs:
            raise ValueError("at least one rung must be a model rung (not cheap)")
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if self.max_queue_delay_ns < 0 or self.starvation_guard_ns < 0 or self.retry_after_floor_ns < 0:
            raise ValueError("durations must be >= 0")
        if not 0.0 < self.batch_share <= 1.0:
            raise ValueError("batch_share must be in (0, 1]")
        if self.max_total_queued < 1:
            raise ValueError("max_total_queued must be >= 1")
        if self.default_class is not None and self.default_class not in names:
            raise ValueError(f"default_class {self.default_class!r} is not one of {names}")

    @property
    def by_level(self) -> tuple[ClassPolicy, ...]:
        """The classes ordered by level, highest priority (level 1) first.  A job's
        ``level_index`` is an index into this tuple."""
        return tuple(sorted(self.classes, key=lambda c: c.level))

    @property
    def model_rungs(self) -> tuple[int, ...]:
        """The rungs that are not cheap, best first."""
        return tuple(r for r in range(self.n_rungs) if r not in self.cheap_rungs)
