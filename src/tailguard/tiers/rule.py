"""The tier decision rule, shared by the blocking and the asyncio tiered engines.

``TierRule`` holds everything but the remote call itself: the edge engine, the breaker, the
round-trip estimate, the counters, and the three steps around the call —

* ``_begin``: the edge decides (always; its decision fixes the priority class and so the
  budget), then the breaker and the budget say whether the remote is called.  Returns either
  a finished ``TieredDecision`` (the edge answers) or a ``PendingCall`` (what to send);
* ``_answered``: a reply came back: used only when it arrived by the deadline and came from
  the remote's first rung (or ``accept_fallback``);
* ``_failed``: the call raised: a client timeout is ``remote_late``, anything else
  ``remote_error``; never re-raised.

Breaker bookkeeping: timeouts, errors and late replies are failures; a fallback reply and a
prompt refusal for lack of time (``predicted_late``, ``expired``) are successes (the server is
alive).  The estimate observes every round trip, and a timeout's wait (a lower bound).

One owner (thread or event loop): no locks; counters are plain integers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tailguard.client import ClientError, Rejected, Result, Timeout
from tailguard.clock import Clock, MonotonicClock
from tailguard.decision import Decision, Flag
from tailguard.engine import Engine
from tailguard.resilience.breaker import CircuitBreaker
from tailguard.schema.wire import Status
from tailguard.service import Service
from tailguard.tiers.config import RemoteTierConfig
from tailguard.tiers.decision import Tier, TieredDecision, TierReason
from tailguard.tiers.estimate import RoundTripEstimate

__all__ = ["PendingCall", "TierRule"]

_EDGE, _REMOTE = Tier.EDGE, Tier.REMOTE
_USED, _SKIPPED = TierReason.REMOTE_USED, TierReason.REMOTE_SKIPPED_BUDGET
_OPEN, _LATE = TierReason.REMOTE_BREAKER_OPEN, TierReason.REMOTE_LATE
_ERROR, _FALLBACK = TierReason.REMOTE_ERROR, TierReason.REMOTE_FALLBACK
_FALLBACK_FLAG = int(Flag.FALLBACK)
# Refusals that say the request could not be answered within its budget (the server's
# admission predicted it late, or the budget was spent on arrival): no sign of ill health.
_REFUSED_IN_TIME = frozenset({Status.PREDICTED_LATE, Status.EXPIRED})


class PendingCall:
    """A remote call the rule decided to make: send ``budget_us`` on the wire, wait at most
    ``timeout_s`` (the time left to the deadline).  Times in ns on the rule's clock."""

    __slots__ = (
        "budget_ns",
        "budget_us",
        "deadline",
        "decision",
        "estimate_ns",
        "start_ns",
        "t0",
        "timeout_s",
    )

    def __init__(self, decision: Decision, t0: int, start_ns: int, deadline: int, estimate_ns: int,
                 budget_ns: int, margin_ns: int) -> None:
        self.decision = decision
        self.t0 = t0
        self.start_ns = start_ns
        self.deadline = deadline
        self.estimate_ns = estimate_ns
        self.budget_ns = budget_ns
        remaining = deadline - start_ns
        self.budget_us = max(1, (remaining - margin_ns) // 1000)
        self.timeout_s = remaining / 1e9


class TierRule:
    """The decision rule and its counters (see the module docstring); subclasses make the call."""

    def __init__(self, edge: Engine | Service, config: RemoteTierConfig | None = None, *,
                 clock: Clock | None = None, breaker: CircuitBreaker | None = None) -> None:
        engine = edge.engine if isinstance(edge, Service) else edge
        self.edge = engine
        self.config = cfg = config or RemoteTierConfig()
        self.clock = clock or MonotonicClock()
        self._now = self.clock.now_ns
        self.breaker = breaker or CircuitBreaker(cfg.breaker.breaker_config(), self.clock, name="remote_tier")
        self.estimate = RoundTripEstimate(float(cfg.prior_s), quantile=cfg.quantile, window=cfg.window,
                                          min_samples=cfg.min_samples, max_age_s=float(cfg.max_age_s))
        self._margin_ns = round(float(cfg.margin_s) * 1e9)
        self._accept_fallback = cfg.accept_fallback
        self._class_budgets = engine.priority_budgets_ns()
        # Counters: plain integers, incremented by the owner, read by statistics().
        self.counts: dict[TierReason, int] = dict.fromkeys(TierReason, 0)
        self.decisions = 0
        self.remote_started = 0
        self.remote_timeouts = 0  # remote_late calls that ended in the client's timeout
        self.remote_late_replies = 0  # remote_late calls whose reply came, after the deadline
        self.remote_errors: dict[str, int] = {}  # remote_error calls by error code

    # -- the three steps ---------------------------------------------------------------------
    def _begin(self, keys: Any, context: Mapping[str, Any] | None, priority: str | None,
               budget_s: float | None) -> TieredDecision | PendingCall:
        now = self._now
        t0 = now()
        d = self.edge.predict(keys, context, priority=priority, budget_s=budget_s)
        budget_ns = self._class_budgets[d.priority]
        if budget_s is not None and budget_s * 1e9 < budget_ns:
            budget_ns = int(budget_s * 1e9)
        deadline = t0 + budget_ns
        self.decisions += 1
        breaker = self.breaker
        if not breaker.allow():
            return self._edge(d, _OPEN, None, t0, 0, 0, budget_ns)
        t1 = now()
        est = self.estimate.estimate_ns(t1)
        if est + self._margin_ns > deadline - t1:
            breaker.release()  # a half-open trial permit, if this was one, goes back unused
            return self._edge(d, _SKIPPED, None, t0, 0, est, budget_ns)
        self.remote_started += 1
        return PendingCall(d, t0, t1, deadline, est, budget_ns, self._margin_ns)

    def _answered(self, call: PendingCall, r: Result) -> TieredDecision:
        t2 = self._now()
        rtt = t2 - call.start_ns
        self.estimate.observe(rtt, t2)
        if t2 > call.deadline:
            self.breaker.failure(call.start_ns)
            self.remote_late_replies += 1
            return self._edge(call.decision, _LATE, r, call.t0, rtt, call.estimate_ns, call.budget_ns)
        self.breaker.success(call.start_ns)
        if r.flags & _FALLBACK_FLAG and not self._accept_fallback:
            return self._edge(call.decision, _FALLBACK, r, call.t0, rtt, call.estimate_ns, call.budget_ns)
        self.counts[_USED] += 1
        return TieredDecision(_REMOTE, _USED, call.decision, r, self._now() - call.t0, rtt, call.estimate_ns,
                              call.budget_ns)

    def _failed(self, call: PendingCall, exc: Exception) -> TieredDecision:
        t2 = self._now()
        rtt = t2 - call.start_ns
        breaker = self.breaker
        if isinstance(exc, Timeout):
            breaker.failure(call.start_ns)
            self.estimate.observe(rtt, t2)
            self.remote_timeouts += 1
            return self._edge(call.decision, _LATE, None, call.t0, rtt, call.estimate_ns, call.budget_ns)
        if isinstance(exc, Rejected) and exc.status in _REFUSED_IN_TIME:
            breaker.success(call.start_ns)  # a server that says "not in time" promptly is healthy
        else:
            breaker.failure(call.start_ns)
        code = exc.code if isinstance(exc, ClientError) else type(exc).__name__
        self.remote_errors[code] = self.remote_errors.get(code, 0) + 1
        return self._edge(call.decision, _ERROR, None, call.t0, rtt, call.estimate_ns, call.budget_ns)

    def _abandoned(self, call: PendingCall) -> None:
        """The call was interrupted (a cancelled task, KeyboardInterrupt): nothing is judged,
        but a half-open trial permit must go back, or the breaker would wait for it forever."""
        self.breaker.release()
        self.remote_started -= 1

    def _edge(self, d: Decision, reason: TierReason, r: Result | None, t0: int, remote_ns: int, est: int,
              budget_ns: int) -> TieredDecision:
        self.counts[reason] += 1
        return TieredDecision(_EDGE, reason, d, r, self._now() - t0, remote_ns, est, budget_ns)

    # -- reporting -------------------------------------------------------------------------------
    def statistics(self) -> dict[str, Any]:
        """Counters: ``decisions``, ``edge_answered``, ``remote_answered``, one per
        ``TierReason`` (``remote_used``, ``remote_skipped_budget``, ``remote_breaker_open``,
        ``remote_late``, ``remote_error``, ``remote_fallback``), ``remote_started`` (calls
        sent), ``remote_timeouts`` and ``remote_late_replies`` (the two kinds of
        ``remote_late``), ``remote_errors`` by code, the round-trip ``estimate`` (µs) and the
        remote ``breaker``'s statistics."""
        counts = self.counts
        used = counts[_USED]
        return {
            "decisions": self.decisions,
            "edge_answered": self.decisions - used,
            "remote_answered": used,
            **{str(reason): n for reason, n in counts.items()},
            "remote_started": self.remote_started,
            "remote_timeouts": self.remote_timeouts,
            "remote_late_replies": self.remote_late_replies,
            "remote_errors": dict(self.remote_errors),
            "estimate": self.estimate.statistics(self._now()),
            "breaker": self.breaker.statistics(),
        }

    def reset_statistics(self) -> None:
        """Zero the counters (not the estimate, the breaker's state or its counters)."""
        self.counts = dict.fromkeys(TierReason, 0)
        self.decisions = self.remote_started = self.remote_timeouts = self.remote_late_replies = 0
        self.remote_errors = {}
