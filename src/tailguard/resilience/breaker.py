"""A circuit breaker: stop calling a dependency that keeps failing, try it again later.

The semantics are resilience4j's ``CircuitBreaker`` (count-based sliding window) with
Hystrix's single trial call, plus a consecutive-failure rule and an exponential open period:

* **closed** — calls go through; each outcome is recorded.  The breaker **opens** when
  ``failures`` calls in a row failed (the consecutive rule: a dead store is noticed after a
  handful of calls, whatever the window), or, once the rolling window of the last
  ``window`` calls is full, when the share of failed calls reaches ``failure_rate`` or the
  share of slow calls (longer than ``slow_s``) reaches ``slow_rate``.  A failed call that
  also took longer than ``slow_s`` counts as both (resilience4j's ``SLOW_ERROR``); when the
  two rates cross together the slow rule is reported, it says more (the store is there but
  slow).  ``failures = 0`` or ``window = 0`` switch a rule off.
* **open** — calls are **short-circuited** (``allow()`` is False, counted) until the open
  period has passed: ``open_s`` for the first opening, doubled after every trial that fails,
  up to ``max_open_s`` (resilience4j's ``waitIntervalFunctionInOpenState`` with exponential
  backoff).  The breaker turns half-open at the first call after the period (as resilience4j
  without its automatic transition thread; there is no timer here).
* **half-open** — ``half_open_calls`` trial calls are let through, one at a time (a further
  call while a trial is out is short-circuited).  A trial that fails or is slow opens the
  breaker again with the next, longer period; ``half_open_calls`` successful trials in a row
  close it, clear the window and reset the backoff.

The caller owns the call: ``allow()`` before it, then exactly one of ``success(start_ns)``,
``failure(start_ns)`` or ``release()`` (the call did not reach the dependency, e.g. a cache
answered) after it; ``start_ns`` is ``now()`` read before the call.  Every method is O(1):
the window is a ring of outcome bytes with running counts.  No locks: one owner thread (the
engine's); ``statistics()`` may be read from another thread (plain integers, approximate).
Times come from the injected clock (``tailguard.clock``; tests pass ``FakeClock``).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Any

from tailguard.clock import Clock, MonotonicClock

__all__ = ["BreakerConfig", "BreakerState", "CircuitBreaker", "Transition"]

_FAILED = 1  # outcome bits in the window ring
_SLOW = 2


class BreakerState(enum.IntEnum):
    """A breaker's state; the value is what the ``tailguard_breaker_state`` gauge exports."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """When a breaker opens and for how long (durations in float seconds; see the module docstring)."""

    #: Consecutive failed calls that open the breaker (0: rule off).
    failures: int = 5
    #: Calls in the rolling window the rates are taken over, once it is full (0: rules off).
    window: int = 20
    #: Share of failed calls in a full window that opens the breaker.
    failure_rate: float = 0.5
    #: A call longer than this is slow.
    slow_s: float = 0.025
    #: Share of slow calls in a full window that opens the breaker.
    slow_rate: float = 0.5
    #: The first open period; doubled after each failed trial.
    open_s: float = 1.0
    #: The longest open period.
    max_open_s: float = 30.0
    #: Successful trial calls in a row that close a half-open breaker.
    half_open_calls: int = 1

    def __post_init__(self) -> None:
        if self.failures < 0 or self.window < 0:
            raise ValueError("failures and window must be >= 0 (0 switches the rule off)")
        for name in ("failure_rate", "slow_rate"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)!r}")
        if not (self.slow_s > 0 and self.open_s > 0 and self.max_open_s >= self.open_s):
            raise ValueError("slow_s and open_s must be positive and max_open_s >= open_s")
        if self.half_open_calls < 1:
            raise ValueError("half_open_calls must be >= 1")


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change: when (ns, breaker clock), from what, to what, and why."""

    at_ns: int
    old: BreakerState
    new: BreakerState
    #: ``"failures"`` (consecutive rule), ``"failure_rate"``, ``"slow_rate"``, ``"trial_failed"``,
    #: ``"trial_slow"``, ``"open_elapsed"`` (to half-open), ``"trials_passed"`` (to closed), ``"reset"``.
    reason: str


class CircuitBreaker:
    """Closed / open / half-open breaker around one dependency (see the module docstring)."""

    def __init__(
        self, config: BreakerConfig | None = None, clock: Clock | None = None, *, name: str = "breaker",
        history: int = 64,
    ) -> None:
        self.config = cfg = config or BreakerConfig()
        self.name = name
        clock = clock or MonotonicClock()
        #: The breaker's clock (bound ``now_ns``): read it before a call to pass ``start_ns``.
        self.now = clock.now_ns
        self._slow_ns = round(cfg.slow_s * 1e9)
        self._open_ns = round(cfg.open_s * 1e9)
        self._max_open_ns = round(cfg.max_open_s * 1e9)
        self._ring = bytearray(max(cfg.window, 1))
        self.state = BreakerState.CLOSED
        self._pos = 0
        self._filled = 0  # calls in the window (up to ``window``)
        self._w_failed = 0  # failed calls in the window
        self._w_slow = 0  # slow calls in the window
        self.streak = 0  # consecutive failures (closed) or successful trials (half-open)
        self._backoff = 0  # failed trials since the breaker last closed
        self._trial_out = False  # a half-open trial is in progress
        #: Monotonic ns (breaker clock) after which an open breaker lets a trial through.
        self.retry_at_ns = 0
        #: Why the breaker last opened (a ``Transition.reason``), "" while it never did.
        self.opened_by = ""
        self.calls = 0  # calls recorded (successes and failures, trials included)
        self.failures = 0  # failed calls
        self.slow = 0  # calls longer than ``slow_s`` (failed or not)
        self.short_circuited = 0  # calls refused while open or while a trial was out
        self.opens = 0  # times the breaker opened (from closed or from half-open)
        self.state_changes = 0
        #: The last ``history`` state changes, oldest first.
        self.transitions: deque[Transition] = deque(maxlen=history)

    # -- the call path -----------------------------------------------------------------------
    def allow(self) -> bool:
        """True when a call may go to the dependency now (a half-open trial is then out); False
        (counted as short-circuited) while open, or while a half-open trial is out."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            now = self.now()
            if now < self.retry_at_ns:
                self.short_circuited += 1
                return False
            self._move(BreakerState.HALF_OPEN, now, "open_elapsed")
            self.streak = 0
        if self._trial_out:
            self.short_circuited += 1
            return False
        self._trial_out = True
        return True

    def success(self, start_ns: int) -> None:
        """The call begun at ``start_ns`` (``now()`` before it) answered; slow if it took over ``slow_s``."""
        now = self.now()
        slow = now - start_ns > self._slow_ns
        self.calls += 1
        if slow:
            self.slow += 1
        if self.state is BreakerState.CLOSED:
            self.streak = 0
            self._record(_SLOW if slow else 0, now)
            return
        self._trial_ended(now, slow, failed=False)

    def answered(self) -> None:
        """A call answered, for a caller that records only what changes something: a half-open
        trial passed, or a closed breaker's run of failures is over.  Nothing (no clock read)
        while the breaker is closed with no failure pending: cheap on a hot path.  Only for a
        breaker without the slow and rate rules (``window = 0``), which need every outcome."""
        if self.state or self.streak:
            self.success(self.now())

    def failure(self, start_ns: int) -> None:
        """The call begun at ``start_ns`` failed (unreachable, timed out)."""
        now = self.now()
        slow = now - start_ns > self._slow_ns
        self.calls += 1
        self.failures += 1
        if slow:
            self.slow += 1
        if self.state is BreakerState.CLOSED:
            self.streak += 1
            if 0 < self.config.failures <= self.streak:
                self._trip(now, "failures")
                return
            self._record(_FAILED | (_SLOW if slow else 0), now)
            return
        self._trial_ended(now, slow, failed=True)

    def release(self) -> None:
        """The call ``allow()`` let through never reached the dependency: nothing is recorded
        and a half-open trial permit is handed back."""
        self._trial_out = False

    # -- transitions -----------------------------------------------------------------------
    def _record(self, outcome: int, now: int) -> None:
        """Closed: put one outcome in the window ring and check the rate rules (O(1))."""
        n = self.config.window
        if not n:
            return
        ring, pos = self._ring, self._pos
        if self._filled == n:
            old = ring[pos]
            self._w_failed -= old & _FAILED
            self._w_slow -= (old & _SLOW) >> 1
        else:
            self._filled += 1
        ring[pos] = outcome
        self._w_failed += outcome & _FAILED
        self._w_slow += (outcome & _SLOW) >> 1
        self._pos = pos + 1 if pos + 1 < n else 0
        if self._filled < n:
            return
        cfg = self.config
        if self._w_slow >= cfg.slow_rate * n:
            self._trip(now, "slow_rate")
        elif self._w_failed >= cfg.failure_rate * n:
            self._trip(now, "failure_rate")

    def _trial_ended(self, now: int, slow: bool, *, failed: bool) -> None:
        self._trial_out = False
        if self.state is not BreakerState.HALF_OPEN:
            return  # reset() or another transition while the call was out: nothing to decide
        if failed or slow:
            self._backoff += 1
            self._trip(now, "trial_failed" if failed else "trial_slow")
            return
        self.streak += 1
        if self.streak >= self.config.half_open_calls:
            self._backoff = 0
            self._clear_window()
            self._move(BreakerState.CLOSED, now, "trials_passed")

    def _trip(self, now: int, reason: str) -> None:
        """Open now, for the current backoff's period."""
        period = min(self._open_ns << min(self._backoff, 62), self._max_open_ns)
        self.retry_at_ns = now + period
        self.opened_by = reason
        self.opens += 1
        self.streak = 0
        self._trial_out = False
        self._move(BreakerState.OPEN, now, reason)

    def _move(self, new: BreakerState, now: int, reason: str) -> None:
        self.transitions.append(Transition(now, self.state, new, reason))
        self.state_changes += 1
        self.state = new

    def _clear_window(self) -> None:
        self._filled = self._pos = self._w_failed = self._w_slow = self.streak = 0

    def reset(self) -> None:
        """Close the breaker and forget the window and the backoff (an operator's override)."""
        self._clear_window()
        self._backoff = 0
        self._trial_out = False
        if self.state is not BreakerState.CLOSED:
            self._move(BreakerState.CLOSED, self.now(), "reset")

    # -- reporting -------------------------------------------------------------------------
    @property
    def open_period_s(self) -> float:
        """The period the next opening would last, in seconds (the backoff so far)."""
        return min(self._open_ns << min(self._backoff, 62), self._max_open_ns) / 1e9

    def statistics(self) -> dict[str, Any]:
        """State, counters, the window's failed and slow calls, the next open period, and the
        last state changes as ``(at_ns, old, new, reason)`` (names, oldest first)."""
        return {
            "state": self.state.name.lower(),
            "calls": self.calls,
            "failures": self.failures,
            "slow": self.slow,
            "short_circuited": self.short_circuited,
            "opens": self.opens,
            "state_changes": self.state_changes,
            "opened_by": self.opened_by,
            "window_calls": self._filled,
            "window_failed": self._w_failed,
            "window_slow": self._w_slow,
            "open_period_s": self.open_period_s,
            "transitions": [(t.at_ns, t.old.name.lower(), t.new.name.lower(), t.reason)
                            for t in self.transitions],
        }

    def reset_statistics(self) -> None:
        """Zero the counters (the state, the window and the backoff stay)."""
        self.calls = self.failures = self.slow = self.short_circuited = self.opens = 0
        self.state_changes = 0
        self.transitions.clear()
