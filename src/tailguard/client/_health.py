"""Which endpoints may take new requests (up, down with backoff, or draining), and which
up endpoint each attempt goes to.

An endpoint goes DOWN when connecting to it fails, when a connection to it is lost with
requests in flight while another endpoint is up (alone, it stays up and the retry reconnects:
an endpoint is often several workers behind one listener), or when it is **ejected** as an
outlier: ``eject_after`` consecutive failed copies (server failures, status 30-39; lost
connections; copies still out when their call timed out) while another endpoint is up.  The
last up endpoint is never ejected: a degraded answer beats none.  It goes DRAINING when it
sends ``Notice(draining)`` or a DRAINING reply.  Either way it is skipped for new requests
until its backoff (doubling per consecutive failure, from ``down_backoff_s`` up to
``max_down_backoff_s``) has passed and a health check (connect, handshake, ``Ping`` answered
``Pong(state="ready")``) readmits it.  A readmitted outlier is on probation: one more failure
ejects it again with a doubled backoff, its first good reply clears its record.  The checks
themselves are run by the clients; this module keeps the states and picks endpoints.

Balancing (``Balance``): ``P2C`` (the default) draws two distinct up endpoints at random and
takes the one with the lower cost, latency estimate times in-flight copies (``_load``); a
readmitted endpoint starts at the neutral (mean) estimate.  ``ROUND_ROBIN`` rotates;
``IN_ORDER`` takes the first up endpoint (primary, then backups).  Any of them prefers
endpoints not marked busy by a recent rejection with ``retry_after``.

Thread safety: state changes take a lock (the sync client calls from many threads);
``choose`` and the per-copy bookkeeping (``sent``, ``replied``...) read and write without
it, so a concurrent change may be seen one request late, which is harmless (a request sent
to an endpoint that just went down fails over like any other); see ``_load`` for what a
race can do to the counters.
"""

from __future__ import annotations

import enum
import itertools
import random
import threading
from collections.abc import Callable, Collection, Sequence
from math import exp as _exp

from tailguard.client._endpoint import Endpoint
from tailguard.client._load import EndpointStats, Load
from tailguard.schema.wire import Welcome

__all__ = ["Balance", "EndpointState", "Health", "Slot"]


class EndpointState(enum.Enum):
    """Whether an endpoint takes new requests."""

    UP = "up"
    DOWN = "down"
    DRAINING = "draining"


class Balance(enum.Enum):
    """How a request's first endpoint is chosen among the up ones."""

    #: Power of two choices: the cheaper of two random endpoints (latency x in-flight).
    P2C = "p2c"
    #: Rotate over the endpoints, request by request.
    ROUND_ROBIN = "round_robin"
    #: The first up endpoint in the order given (primary, then backups).
    IN_ORDER = "in_order"


_UP = EndpointState.UP


class Slot:
    """One endpoint's mutable state.  ``index`` is its position in the client's list."""

    __slots__ = ("busy_until_ns", "ejected", "endpoint", "failures", "index", "label", "load", "reason",
                 "retry_at_ns", "state", "welcome")

    def __init__(self, endpoint: Endpoint, index: int) -> None:
        self.endpoint = endpoint
        self.index = index
        self.label = str(endpoint)
        self.state = EndpointState.UP
        #: Consecutive times it was taken out of rotation (sets the backoff).
        self.failures = 0
        self.retry_at_ns = 0
        #: Soft avoidance after a rejection with retry_after (monotonic ns).
        self.busy_until_ns = 0
        self.reason = ""
        self.welcome: Welcome | None = None
        #: Latency estimate, copies in flight, counters.
        self.load = Load()
        #: Ejected as an outlier, and not yet answered well since (on probation once readmitted).
        self.ejected = False


class Health:
    """The endpoints' states and the choice of endpoint for each attempt.

    ``eject_after``: consecutive failed copies that eject an endpoint (0: never).
    ``latency_decay_s``: the time constant of the latency estimate.  ``rng``: the random
    source of ``P2C`` (seed one for reproducible choices).
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        now_ns: Callable[[], int],
        *,
        balance: Balance = Balance.ROUND_ROBIN,
        down_backoff_s: float = 0.1,
        max_down_backoff_s: float = 5.0,
        eject_after: int = 5,
        latency_decay_s: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("a client needs at least one endpoint")
        if eject_after < 0 or not latency_decay_s > 0:
            raise ValueError(f"need eject_after >= 0 and latency_decay_s > 0, got {eject_after}, "
                             f"{latency_decay_s}")
        self.slots = [Slot(ep, i) for i, ep in enumerate(endpoints)]
        self._now = now_ns
        self._balance = balance
        self._rr = itertools.count()
        self._base_ns = round(down_backoff_s * 1e9)
        self._max_ns = round(max_down_backoff_s * 1e9)
        self._eject_after = eject_after
        self._decay_ns = latency_decay_s * 1e9
        self._random = (rng or random.Random()).random
        self._lock = threading.Lock()
        #: Called with the slot after it leaves UP (the clients close its idle connections).
        self.on_down: Callable[[Slot], None] | None = None

    # -- choosing ----------------------------------------------------------------------------
    def choose(self, exclude: Collection[int] = ()) -> Slot | None:
        """An UP endpoint not in ``exclude`` (indices), preferring ones not marked busy by a
        recent rejection; None when there is none."""
        if self._balance is Balance.P2C and len(self.slots) > 1:
            return self._p2c(exclude)
        slots = self.slots
        n = len(slots)
        start = 0 if self._balance is Balance.IN_ORDER else next(self._rr) % n
        now = 0
        fallback: Slot | None = None
        for k in range(n):
            s = slots[(start + k) % n]
            if s.state is not _UP or s.index in exclude:
                continue
            if s.busy_until_ns:
                now = now or self._now()
                if s.busy_until_ns > now:
                    fallback = fallback or s
                    continue
            return s
        return fallback

    def _p2c(self, exclude: Collection[int]) -> Slot | None:
        slots = self.slots
        n = len(slots)
        rand = self._random
        now = self._now()
        # Fast path, no allocation: two distinct random endpoints that may both take it.
        i = int(rand() * n)
        j = int(rand() * (n - 1))
        if j >= i:
            j += 1
        a, b = slots[i], slots[j]
        if (a.state is _UP and b.state is _UP and i not in exclude and j not in exclude
                and a.busy_until_ns <= now and b.busy_until_ns <= now):
            return self._cheaper(a, b, now)
        # Some are out: draw among those that may take it (the busy ones if nothing else).
        up = [s for s in slots if s.state is _UP and s.index not in exclude]
        free = [s for s in up if s.busy_until_ns <= now] or up
        if len(free) < 2:
            return free[0] if free else None
        i = int(rand() * len(free))
        j = int(rand() * (len(free) - 1))
        if j >= i:
            j += 1
        return self._cheaper(free[i], free[j], now)

    def _cheaper(self, a: Slot, b: Slot, now: int) -> Slot:
        la, lb = a.load, b.load
        sa, sb = la.stamp_ns, lb.stamp_ns
        decay = self._decay_ns
        # The estimates decayed to now (see _load); -1: nothing observed yet.
        ea = la.ewma_ns * _exp((sa - now) / decay) if sa else -1.0
        eb = lb.ewma_ns * _exp((sb - now) / decay) if sb else -1.0
        if ea < 0 or eb < 0:
            neutral = self._neutral_ns(now)
            ea = neutral if ea < 0 else ea
            eb = neutral if eb < 0 else eb
        return b if (eb + 1.0) * (lb.inflight + 1) < (ea + 1.0) * (la.inflight + 1) else a

    def _neutral_ns(self, now: int) -> float:
        """The mean estimate of the up endpoints with one (what an unobserved one costs)."""
        known = [s.load.estimate_ns(now, self._decay_ns) for s in self.slots
                 if s.state is _UP and s.load.stamp_ns]
        return sum(known) / len(known) if known else 0.0

    def any_up(self, exclude: Collection[int] = ()) -> bool:
        """Whether some UP endpoint is outside ``exclude``."""
        return any(s.state is _UP and s.index not in exclude for s in self.slots)

    # -- per-copy bookkeeping (no lock: see _load) ----------------------------------------------
    def sent(self, slot: Slot) -> None:
        """A copy of a request went to ``slot``."""
        slot.load.sent()

    def replied(self, slot: Slot, status: int, latency_ns: int, now_ns: int) -> None:
        """``slot`` answered a copy with ``status`` after ``latency_ns``.  Good replies and
        request errors (10-19) teach the latency estimate; rejections (20-29) teach nothing
        (an overloaded server answers them fast); server failures (30-39) count toward
        ejection."""
        load = slot.load
        load.done()
        if status < 20:
            load.observe(latency_ns, now_ns, self._decay_ns)
            if status < 10 and (load.streak or slot.ejected):
                self._recovered(slot)
        elif status >= 30:
            self._failed(slot, "server failures")

    def lost(self, slot: Slot, *, blame: bool = True) -> None:
        """A copy's connection to ``slot`` was lost with it in flight (``blame``: count it as
        the endpoint's failure; not when the server closed over a request error)."""
        slot.load.done()
        if blame:
            self._failed(slot, "lost connections")

    def abandoned(
        self, slot: Slot, elapsed_ns: int, now_ns: int, *, timed_out: bool, lost_race: bool
    ) -> None:
        """A copy still out on ``slot`` is given up after ``elapsed_ns``: its call timed out
        (a failure), or another copy won (``lost_race``).  Either way the endpoint took at
        least ``elapsed_ns``, which the latency estimate learns; a copy abandoned for any
        other reason (cancelled, another copy's error) only leaves the in-flight count."""
        load = slot.load
        load.done()
        if timed_out or lost_race:
            load.observe(elapsed_ns, now_ns, self._decay_ns)
        if timed_out:
            self._failed(slot, "timeouts")

    def connect_failed(self, slot: Slot) -> None:
        """Connecting to ``slot`` failed (it is marked down separately): counted only."""
        slot.load.failures += 1

    def _failed(self, slot: Slot, what: str) -> None:
        load = slot.load
        load.failures += 1
        load.streak += 1
        n = self._eject_after
        if n and (load.streak >= n or slot.ejected) and slot.state is _UP:
            self._down(slot, f"ejected: {load.streak} consecutive failed requests ({what})",
                       EndpointState.DOWN, only_if_up=True, keep_one_up=True)

    def _recovered(self, slot: Slot) -> None:
        slot.load.streak = 0
        if slot.ejected:
            with self._lock:
                slot.ejected = False
                slot.failures = 0

    # -- state changes (under the lock) -----------------------------------------------------------
    def mark_down(self, slot: Slot, reason: str, state: EndpointState = EndpointState.DOWN) -> None:
        """Take ``slot`` out of rotation until its backoff has passed and a check readmits it.

        A no-op when it is already out: many calls see one failure (every request pipelined
        on a lost connection), and only failed health checks lengthen the backoff."""
        self._down(slot, reason, state, only_if_up=True)

    def check_failed(self, slot: Slot, reason: str) -> None:
        """A health check of an out-of-rotation ``slot`` failed: double its backoff (a
        draining endpoint stays DRAINING)."""
        keep = slot.state if slot.state is not _UP else EndpointState.DOWN
        self._down(slot, reason, keep, only_if_up=False)

    def _down(self, slot: Slot, reason: str, state: EndpointState, only_if_up: bool,
              keep_one_up: bool = False) -> None:
        with self._lock:
            was_up = slot.state is _UP
            if only_if_up and not was_up:
                return
            if keep_one_up:
                # Ejection never takes the last up endpoint: checked under the lock, so two
                # threads cannot eject the last two at once.
                if not any(s.state is _UP for s in self.slots if s is not slot):
                    return
                slot.ejected = True
            slot.failures += 1
            backoff = min(self._max_ns, self._base_ns << min(slot.failures - 1, 30))
            slot.state = state
            slot.retry_at_ns = self._now() + backoff
            slot.reason = reason
        if was_up and self.on_down is not None:
            self.on_down(slot)

    def mark_draining(self, slot: Slot) -> None:
        """The endpoint said it is draining: no new requests until a check says ``ready``."""
        if slot.state is _UP:
            self.mark_down(slot, "draining", EndpointState.DRAINING)

    def mark_up(self, slot: Slot, welcome: Welcome | None = None) -> None:
        """Readmit ``slot`` (a health check passed) at the neutral latency estimate.  An
        ejected outlier keeps its backoff record until its first good reply (probation)."""
        with self._lock:
            slot.state = _UP
            if not slot.ejected:
                slot.failures = 0
            slot.retry_at_ns = 0
            slot.reason = ""
            slot.load.reset()
            if welcome is not None:
                slot.welcome = welcome

    def mark_busy(self, slot: Slot, retry_after_ns: int) -> None:
        """Prefer other endpoints for ``retry_after_ns`` (the server rejected a request)."""
        slot.busy_until_ns = self._now() + retry_after_ns

    # -- reading -----------------------------------------------------------------------------------
    def due(self) -> list[Slot]:
        """Endpoints out of rotation whose backoff has passed (ready for a health check)."""
        now = self._now()
        return [s for s in self.slots if s.state is not _UP and s.retry_at_ns <= now]

    def next_due_s(self) -> float:
        """Seconds until the next out-of-rotation endpoint is due for a check (0.0 if none)."""
        waits = [s.retry_at_ns for s in self.slots if s.state is not _UP]
        return max(0.0, (min(waits) - self._now()) / 1e9) if waits else 0.0

    def states(self) -> dict[str, str]:
        """Each endpoint's state, by canonical address."""
        return {s.label: s.state.value for s in self.slots}

    def endpoint_stats(self) -> list[EndpointStats]:
        """Each endpoint's state, in-flight copies, latency estimate and counters, in order."""
        now = self._now()
        return [s.load.stats(s.label, s.state, now, self._decay_ns) for s in self.slots]
