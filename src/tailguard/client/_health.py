"""Which endpoints may take new requests: up, down (with backoff) or draining.

An endpoint goes DOWN when connecting to it fails, or when a connection to it is lost with
requests in flight while another endpoint is up (alone, it stays up and the retry reconnects:
an endpoint is often several workers behind one listener), and DRAINING when it sends
``Notice(draining)`` or a DRAINING reply.
Either way it is skipped for new requests until its backoff (doubling per consecutive
failure, from ``down_backoff_s`` up to ``max_down_backoff_s``) has passed and a health check
(connect, handshake, ``Ping`` answered ``Pong(state="ready")``) readmits it.  The checks
themselves are run by the clients; this module only keeps the states and picks endpoints.

Thread safety: state changes take a lock (the sync client calls from many threads);
``choose`` reads without it, so a concurrent change may be seen one request late, which is
harmless (a request sent to an endpoint that just went down fails over like any other).
"""

from __future__ import annotations

import enum
import itertools
import threading
from collections.abc import Callable, Collection, Sequence

from tailguard.client._endpoint import Endpoint
from tailguard.schema.wire import Welcome

__all__ = ["Balance", "EndpointState", "Health", "Slot"]


class EndpointState(enum.Enum):
    """Whether an endpoint takes new requests."""

    UP = "up"
    DOWN = "down"
    DRAINING = "draining"


class Balance(enum.Enum):
    """How a request's first endpoint is chosen among the up ones."""

    #: Rotate over the endpoints, request by request.
    ROUND_ROBIN = "round_robin"
    #: The first up endpoint in the order given (primary, then backups).
    IN_ORDER = "in_order"


class Slot:
    """One endpoint's mutable state.  ``index`` is its position in the client's list."""

    __slots__ = ("busy_until_ns", "endpoint", "failures", "index", "label", "reason", "retry_at_ns",
                 "state", "welcome")

    def __init__(self, endpoint: Endpoint, index: int) -> None:
        self.endpoint = endpoint
        self.index = index
        self.label = str(endpoint)
        self.state = EndpointState.UP
        self.failures = 0
        self.retry_at_ns = 0
        #: Soft avoidance after a rejection with retry_after (monotonic ns).
        self.busy_until_ns = 0
        self.reason = ""
        self.welcome: Welcome | None = None


class Health:
    """The endpoints' states and the choice of endpoint for each attempt."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        now_ns: Callable[[], int],
        *,
        balance: Balance = Balance.ROUND_ROBIN,
        down_backoff_s: float = 0.1,
        max_down_backoff_s: float = 5.0,
    ) -> None:
        if not endpoints:
            raise ValueError("a client needs at least one endpoint")
        self.slots = [Slot(ep, i) for i, ep in enumerate(endpoints)]
        self._now = now_ns
        self._balance = balance
        self._rr = itertools.count()
        self._base_ns = round(down_backoff_s * 1e9)
        self._max_ns = round(max_down_backoff_s * 1e9)
        self._lock = threading.Lock()
        #: Called with the slot after it leaves UP (the clients close its idle connections).
        self.on_down: Callable[[Slot], None] | None = None

    def choose(self, exclude: Collection[int] = ()) -> Slot | None:
        """An UP endpoint not in ``exclude`` (indices), preferring ones not marked busy by a
        recent rejection; None when there is none."""
        slots = self.slots
        n = len(slots)
        start = 0 if self._balance is Balance.IN_ORDER else next(self._rr) % n
        now = 0
        fallback: Slot | None = None
        for k in range(n):
            s = slots[(start + k) % n]
            if s.state is not EndpointState.UP or s.index in exclude:
                continue
            if s.busy_until_ns:
                now = now or self._now()
                if s.busy_until_ns > now:
                    fallback = fallback or s
                    continue
            return s
        return fallback

    def any_up(self, exclude: Collection[int] = ()) -> bool:
        """Whether some UP endpoint is outside ``exclude``."""
        return any(s.state is EndpointState.UP and s.index not in exclude for s in self.slots)

    def mark_down(self, slot: Slot, reason: str, state: EndpointState = EndpointState.DOWN) -> None:
        """Take ``slot`` out of rotation until its backoff has passed and a check readmits it.

        A no-op when it is already out: many calls see one failure (every request pipelined
        on a lost connection), and only failed health checks lengthen the backoff."""
        self._down(slot, reason, state, only_if_up=True)

    def check_failed(self, slot: Slot, reason: str) -> None:
        """A health check of an out-of-rotation ``slot`` failed: double its backoff (a
        draining endpoint stays DRAINING)."""
        keep = slot.state if slot.state is not EndpointState.UP else EndpointState.DOWN
        self._down(slot, reason, keep, only_if_up=False)

    def _down(self, slot: Slot, reason: str, state: EndpointState, only_if_up: bool) -> None:
        with self._lock:
            was_up = slot.state is EndpointState.UP
            if only_if_up and not was_up:
                return
            slot.failures += 1
            backoff = min(self._max_ns, self._base_ns << min(slot.failures - 1, 30))
            slot.state = state
            slot.retry_at_ns = self._now() + backoff
            slot.reason = reason
        if was_up and self.on_down is not None:
            self.on_down(slot)

    def mark_draining(self, slot: Slot) -> None:
        """The endpoint said it is draining: no new requests until a check says ``ready``."""
        if slot.state is EndpointState.UP:
            self.mark_down(slot, "draining", EndpointState.DRAINING)

    def mark_up(self, slot: Slot, welcome: Welcome | None = None) -> None:
        """Readmit ``slot`` (a health check passed)."""
        with self._lock:
            slot.state = EndpointState.UP
            slot.failures = 0
            slot.retry_at_ns = 0
            slot.reason = ""
            if welcome is not None:
                slot.welcome = welcome

    def mark_busy(self, slot: Slot, retry_after_ns: int) -> None:
        """Prefer other endpoints for ``retry_after_ns`` (the server rejected a request)."""
        slot.busy_until_ns = self._now() + retry_after_ns

    def due(self) -> list[Slot]:
        """Endpoints out of rotation whose backoff has passed (ready for a health check)."""
        now = self._now()
        return [s for s in self.slots if s.state is not EndpointState.UP and s.retry_at_ns <= now]

    def next_due_s(self) -> float:
        """Seconds until the next out-of-rotation endpoint is due for a check (0.0 if none)."""
        waits = [s.retry_at_ns for s in self.slots if s.state is not EndpointState.UP]
        return max(0.0, (min(waits) - self._now()) / 1e9) if waits else 0.0

    def states(self) -> dict[str, str]:
        """Each endpoint's state, by canonical address."""
        return {s.label: s.state.value for s in self.slots}
