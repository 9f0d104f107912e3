"""What both clients share: options, counters, hedge windows, endpoint health and balancing
(``_health``), and building a call.

``Core`` is made once per client and holds no sockets.  Its counters are incremented under
a lock (the sync client is used from many threads; in the async client the lock is never
contended); ``statistics()`` copies them.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from tailguard.client._call import Call
from tailguard.client._endpoint import Endpoint
from tailguard.client._errors import InvalidRequest
from tailguard.client._health import Balance, Health, Slot
from tailguard.client._hedge import HedgePolicy, LatencyWindow
from tailguard.client._load import EndpointStats
from tailguard.clock import Clock, MonotonicClock
from tailguard.schema.frames import encode_frame
from tailguard.schema.wire import MAGIC, PROTOCOL_VERSIONS, Hello, Request, Status

__all__ = ["COUNTERS", "Core", "Stats", "call_timeout"]

#: The counters ``statistics()`` reports (besides ``errors`` by code and endpoint states).
COUNTERS = (
    "requests",            # predict / predict_batch calls
    "retries",             # copies re-sent after a failed attempt
    "failovers",           # attempts that moved to another endpoint
    "hedges_sent",         # second copies sent
    "hedge_wins",          # calls answered by the second copy
    "losers_ignored",      # replies to a losing copy, discarded on arrival
    "late_ignored",        # replies that came after their call had timed out
    "timeouts",            # calls that ended with Timeout
    "connections_opened",
    "connect_failures",
    "health_checks",
)



def call_timeout(budget_us: int | None, timeout_s: float | None, default_s: float, margin_s: float) -> float:
    """A call's client timeout: ``timeout_s`` when given, else the budget plus ``margin_s``, else
    ``default_s``; raises ``InvalidRequest`` for a budget that is not a positive int (µs) or a
    timeout that is not positive."""
    if budget_us is not None and (type(budget_us) is not int or budget_us <= 0):
        raise InvalidRequest(f"budget_us must be a positive int (µs), got {budget_us!r}",
                             status=Status.INVALID_REQUEST, field="budget_us")
    if timeout_s is not None and not timeout_s > 0:
        raise InvalidRequest(f"timeout_s must be > 0, got {timeout_s!r}",
                             status=Status.INVALID_REQUEST, field="timeout_s")
    if timeout_s is None:
        return budget_us / 1e6 + margin_s if budget_us else default_s
    return timeout_s

class Stats:
    """Counters, and errors raised to callers by code.  Any thread may increment."""

    __slots__ = ("_lock", "counts", "errors")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.errors: dict[str, int] = {}

    def inc(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name``."""
        with self._lock:
            self.counts[name] += n

    def error(self, code: str) -> None:
        """Count one error raised to a caller."""
        with self._lock:
            self.errors[code] = self.errors.get(code, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """A copy of the counters, with ``errors`` as a dict by code."""
        with self._lock:
            out: dict[str, Any] = dict(self.counts)
            out["errors"] = dict(self.errors)
        return out


def _enc_hook(obj: Any) -> Any:
    # NumPy scalars and arrays are common keys/context values; msgpack has no type for them.
    tolist = getattr(obj, "tolist", None)
    if tolist is not None:
        return tolist()
    raise TypeError(f"cannot send a value of type {type(obj).__name__}")


def make_encoder() -> msgspec.msgpack.Encoder:
    """The request encoder (NumPy values become lists/scalars); one per connection."""
    return msgspec.msgpack.Encoder(enc_hook=_enc_hook)


class Core:
    """A client's configuration and shared state (health, stats, hedge windows)."""

    def __init__(
        self,
        endpoints: str | Endpoint | Sequence[str | Endpoint],
        *,
        pool_size: int,
        connect_timeout_s: float,
        timeout_s: float,
        timeout_margin_s: float,
        max_retries: int,
        hedge: HedgePolicy | None,
        balance: Balance,
        down_backoff_s: float,
        max_down_backoff_s: float,
        eject_after: int,
        latency_decay_s: float,
        rng: random.Random | None,
        client_id: str,
        max_reply_frame: int,
        clock: Clock | None,
    ) -> None:
        eps = [endpoints] if isinstance(endpoints, str | Endpoint) else list(endpoints)
        if pool_size < 1 or max_retries < 0:
            raise ValueError(f"need pool_size >= 1 and max_retries >= 0, got {pool_size}, {max_retries}")
        if not (connect_timeout_s > 0 and timeout_s > 0 and timeout_margin_s >= 0):
            raise ValueError("connect_timeout_s and timeout_s must be > 0, timeout_margin_s >= 0")
        self.clock = clock or MonotonicClock()
        self.now = self.clock.now_ns
        self.health = Health([Endpoint.parse(e) for e in eps], self.now, balance=balance,
                             down_backoff_s=down_backoff_s, max_down_backoff_s=max_down_backoff_s,
                             eject_after=eject_after, latency_decay_s=latency_decay_s, rng=rng)
        self.stats = Stats()
        self.pool_size = pool_size
        self.connect_timeout_s = connect_timeout_s
        self.timeout_s = timeout_s
        self.timeout_margin_s = timeout_margin_s
        self.max_retries = max_retries
        self.max_reply_frame = max_reply_frame
        self.hedge = hedge
        self._windows: list[LatencyWindow] = []
        if hedge is not None:
            n = len(self.health.slots) if hedge.per_endpoint else 1
            self._windows = [LatencyWindow(hedge) for _ in range(n)]
        hello = Hello(MAGIC, list(PROTOCOL_VERSIONS), client_id)
        self.hello_frame = encode_frame(msgspec.msgpack.Encoder(), hello)

    def window(self, slot: Slot) -> LatencyWindow | None:
        """The latency window that sets hedge delays for ``slot`` (None: hedging off)."""
        w = self._windows
        if not w:
            return None
        return w[slot.index] if len(w) > 1 else w[0]

    def hedge_allowed(self) -> bool:
        """Whether the hedge throttle (``burst + max_fraction * requests``) has room."""
        h = self.hedge
        if h is None:
            return False
        c = self.stats.counts
        return c["hedges_sent"] < h.burst + h.max_fraction * c["requests"]

    def record_win(self, slot: Slot, latency_ns: int, hedge_won: bool) -> None:
        """A call was answered by ``slot`` after ``latency_ns`` (send to reply)."""
        w = self.window(slot)
        if w is not None:
            w.record(latency_ns)
        if hedge_won:
            self.stats.inc("hedge_wins")

    def new_call(
        self,
        keys: Any,
        context: Mapping[str, Any] | None,
        batch: bool,
        priority: str | None,
        budget_us: int | None,
        timeout_s: float | None,
        idempotent: bool,
        traceparent: str = "",
    ) -> Call:
        """Validate the arguments and start a ``Call``.  ``budget_us`` goes on the wire; the
        client timeout is ``timeout_s``, else the budget plus ``timeout_margin_s``, else the
        client's default ``timeout_s``.  ``traceparent`` (W3C) rides along unchecked: the
        server ignores (and counts) one that does not parse."""
        self.stats.inc("requests")
        timeout_s = call_timeout(budget_us, timeout_s, self.timeout_s, self.timeout_margin_s)
        ctx = context if context is None or type(context) is dict else dict(context)
        req = Request(0, keys, ctx, priority or "", budget_us or 0, "", batch, "", "", idempotent,
                      traceparent)
        return Call(self, req, timeout_s, self.now())

    def endpoint_stats(self) -> list[EndpointStats]:
        """Each endpoint's state, in-flight copies, latency estimate and counters."""
        return self.health.endpoint_stats()

    def statistics(self) -> dict[str, Any]:
        """Counters (``COUNTERS``), ``errors`` by code, and ``endpoints``: state by address."""
        out = self.stats.snapshot()
        out["endpoints"] = self.health.states()
        return out
