"""The blocking client: ``Client.predict`` / ``predict_batch`` over pooled connections.

Thread safety: one ``Client`` may be shared by many threads.  Each call checks connections
out of the per-endpoint pool (``_sync_pool``: a connection carries one call's copy at a
time), waits on them with a selector (``_sync_legs``) and gives them back; pools, endpoint
health and counters are guarded by locks.  Hedging waits on both copies' sockets from the
calling thread: no thread is started per request.  The only thread the client starts is
the optional health checker (``health_interval_s > 0``), started when an endpoint first
goes down.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tailguard.client._call import Call
from tailguard.client._channel import Lost
from tailguard.client._core import Core
from tailguard.client._endpoint import Endpoint
from tailguard.client._errors import ClientError, ConnectFailed, Timeout, Unavailable
from tailguard.client._health import Balance, EndpointState, Slot
from tailguard.client._hedge import HedgePolicy
from tailguard.client._load import EndpointStats
from tailguard.client._result import BatchResult, Result, batch_result, single_result
from tailguard.client._sync_conn import SyncConn
from tailguard.client._sync_legs import Leg, await_legs
from tailguard.client._sync_pool import SyncPools
from tailguard.clock import Clock
from tailguard.schema.frames import DEFAULT_MAX_FRAME
from tailguard.schema.wire import Request, Welcome

__all__ = ["Client"]

_UP = EndpointState.UP


class Client:
    """A blocking tailguard client over one or more endpoints (see the module docstring).

    ``endpoints``: ``"host:port"``, ``"tcp://host:port"``, ``"unix:///path"`` (or a list).
    ``pool_size``: idle connections kept per endpoint.  ``warm_connections``: connections per
    endpoint ``connect`` opens and pools (``pool_size`` is raised to it): against a replica of
    several workers behind one listener they spread over the workers, so a call whose
    connection died with its worker is re-sent on a pooled one without a new connect.
    ``connect_timeout_s``: connect plus
    handshake.  ``timeout_s``: the client timeout of calls that give neither ``timeout_s``
    nor ``budget_us`` (with a budget: budget + ``timeout_margin_s``).  ``max_retries``:
    re-sends per call.  ``hedge``: a ``HedgePolicy`` to hedge slow calls (None: off).
    ``balance``: how each attempt's endpoint is chosen (default ``Balance.P2C``: the cheaper,
    by latency estimate times copies in flight, of two random up endpoints).
    ``eject_after``: consecutive failed copies (server failures, lost connections,
    timeouts) after which an endpoint is ejected like a failed one, unless it is the last
    one up (0: never).  ``latency_decay_s``: the time constant of the per-endpoint latency
    estimate.  ``rng``: the random source of ``P2C`` (seed it for reproducible choices).
    ``down_backoff_s`` / ``max_down_backoff_s``: how long a failed endpoint rests before a
    health check.  ``health_interval_s``: how often a background thread checks down
    endpoints (0: only when a call finds no endpoint up).  ``clock``: monotonic time (tests
    inject a fake).
    """

    def __init__(
        self,
        endpoints: str | Endpoint | Sequence[str | Endpoint],
        *,
        pool_size: int = 4,
        warm_connections: int = 1,
        connect_timeout_s: float = 1.0,
        timeout_s: float = 1.0,
        timeout_margin_s: float = 0.02,
        max_retries: int = 2,
        hedge: HedgePolicy | None = None,
        balance: Balance = Balance.P2C,
        eject_after: int = 5,
        latency_decay_s: float = 0.5,
        rng: random.Random | None = None,
        down_backoff_s: float = 0.1,
        max_down_backoff_s: float = 5.0,
        health_interval_s: float = 0.5,
        client_id: str = "",
        max_reply_frame: int = 64 * DEFAULT_MAX_FRAME,
        clock: Clock | None = None,
    ) -> None:
        self._core = core = Core(
            endpoints, pool_size=max(pool_size, warm_connections), connect_timeout_s=connect_timeout_s,
            timeout_s=timeout_s,
            timeout_margin_s=timeout_margin_s, max_retries=max_retries, hedge=hedge, balance=balance,
            down_backoff_s=down_backoff_s, max_down_backoff_s=max_down_backoff_s, eject_after=eject_after,
            latency_decay_s=latency_decay_s, rng=rng, client_id=client_id, max_reply_frame=max_reply_frame,
            clock=clock,
        )
        self._now = core.now
        if warm_connections < 1:
            raise ValueError(f"warm_connections must be >= 1, got {warm_connections}")
        self._warm = warm_connections
        self._pools = SyncPools(core, health_interval_s)

    # -- public API --------------------------------------------------------------------------
    def predict(
        self, keys: Any, context: Mapping[str, Any] | None = None, *, priority: str | None = None,
        budget_us: int | None = None, timeout_s: float | None = None, idempotent: bool = True,
        traceparent: str = "",
    ) -> Result:
        """One decision for entity ``keys`` (a key, or ``{entity: key}``) with request-time
        ``context`` values.  ``budget_us`` (µs) goes on the wire and sets the default client
        timeout (budget + margin).  ``traceparent``: a W3C header value, to make the server's
        span a child of the caller's.  Blocks the calling thread; raises a ``ClientError``."""
        call = self._core.new_call(keys, context, False, priority, budget_us, timeout_s, idempotent,
                                   traceparent)
        reply, leg, hedged, welcome = self._run(call)
        return single_result(reply, welcome, leg.slot.label, hedged, leg.hedge, call.attempts,
                             (self._now() - call.start_ns) / 1e9)

    def predict_batch(
        self, keys: Any, context: Mapping[str, Any] | None = None, *, priority: str | None = None,
        budget_us: int | None = None, timeout_s: float | None = None, idempotent: bool = True,
        traceparent: str = "",
    ) -> BatchResult:
        """Decisions for a sequence of keys (or ``{entity: [keys]}``); ``context`` values are
        scalars or one value per row (lists or NumPy arrays).  As ``predict`` otherwise."""
        call = self._core.new_call(keys, context, True, priority, budget_us, timeout_s, idempotent,
                                   traceparent)
        reply, leg, hedged, welcome = self._run(call)
        return batch_result(reply, welcome, leg.slot.label, hedged, leg.hedge, call.attempts,
                            (self._now() - call.start_ns) / 1e9)

    def connect(self) -> int:
        """Open (or check) ``warm_connections`` pooled connections to every up endpoint now,
        so that the first calls do not spend their budget connecting.  Returns how many
        endpoints answered;
        the others are marked down.  Raises ``Unavailable`` when none did."""
        core = self._core
        reached = 0
        errors: list[ClientError] = []
        for slot in core.health.slots:
            if slot.state is not _UP:
                continue
            held: list[SyncConn] = []
            for _ in range(self._warm):  # held at once: each acquire past the idle ones opens one
                call = Call(core, Request(0), core.connect_timeout_s, self._now())
                try:
                    conn = self._pools.acquire(slot, call)
                except ClientError as err:
                    errors.append(err)
                    break
                if conn is None:
                    break
                held.append(conn)
            for conn in held:
                self.release(conn)
            reached += bool(held)
        if not reached:
            raise Unavailable("no endpoint could be connected", errors=errors,
                              retry_after_s=core.health.next_due_s())
        return reached

    def welcome(self) -> Welcome:
        """The ``Welcome`` of an up endpoint (service name, outputs, rungs, priorities...),
        connecting first if no endpoint has been reached yet.  Raises ``Unavailable``."""
        for _ in range(2):
            for slot in self._core.health.slots:
                if slot.welcome is not None and slot.state is _UP:
                    return slot.welcome
            self.connect()
        raise Unavailable("no up endpoint has welcomed this client")

    def check_health(self) -> dict[str, str]:
        """Health-check every endpoint whose backoff has passed (``Ping``, readmitted on
        ``ready``) now, on the calling thread; returns each endpoint's state."""
        return self._pools.check_health()

    def statistics(self) -> dict[str, Any]:
        """Counters (requests, retries, failovers, hedges_sent, hedge_wins, losers_ignored,
        late_ignored, timeouts, connections_opened, connect_failures, health_checks),
        ``errors`` raised to callers by code, ``endpoints`` (state by address) and ``idle``
        (pooled connections by address)."""
        out = self._core.statistics()
        out["idle"] = self._pools.idle()
        return out

    def endpoint_stats(self) -> list[EndpointStats]:
        """Per endpoint, in the order given: state, copies in flight, latency estimate (µs),
        copies sent, failures and the current run of consecutive failures."""
        return self._core.endpoint_stats()

    def close(self) -> None:
        """Close every pooled connection and stop the health checker (idempotent)."""
        self._pools.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls ---------------------------------------------------------------------------------
    def _run(self, call: Call) -> tuple[Any, Leg, bool, Welcome]:
        try:
            if self._pools.closed.is_set():
                raise Unavailable("the client is closed")
            health = self._core.health
            while True:
                legs = [self._launch(call)]
                won = timed_out = False
                try:
                    got = await_legs(self, call, legs)
                    won = not isinstance(got, int)
                except Timeout:
                    timed_out = True
                    raise
                finally:
                    now = self._now() if legs else 0
                    for leg in legs:  # copies still out: their replies will be discarded
                        leg.conn.ch.abandon(leg.req_id, won)
                        self.release(leg.conn)
                        health.abandoned(leg.slot, now - leg.sent_ns, now, timed_out=timed_out, lost_race=won)
                if isinstance(got, int):
                    if got > 0:
                        time.sleep(got / 1e9)
                    continue
                return got
        except ClientError as exc:
            self._core.stats.error(exc.code)
            raise

    def _launch(self, call: Call) -> Leg:
        """Send ``call``'s next copy to the best endpoint; raises Unavailable or Timeout."""
        while True:
            slot = self._pick(call)
            try:
                conn = self._pools.acquire(slot, call)
            except ConnectFailed as err:
                call.connect_failed(slot, err)
                continue
            if conn is None:  # its endpoint turned out to be draining: choose again
                continue
            call.begin(slot)
            leg = self.send_copy(call, conn, slot, hedge=False)
            if leg is not None:
                return leg

    def send_copy(self, call: Call, conn: SyncConn, slot: Slot, hedge: bool) -> Leg | None:
        """Send one copy of ``call`` on ``conn``; None when the send failed and a retry is
        due (the connection is discarded).  Raises Timeout when the budget is spent."""
        now = self._now()
        req_id = conn.ch.take_id()
        msg = call.wire(req_id, now)
        if msg is None or now >= call.deadline_ns:
            self.release(conn)
            if hedge:  # the first copy may still answer in time
                return None
            raise call.timed_out()
        try:
            frame = conn.ch.encode(msg)
        except ClientError:
            self.release(conn)
            raise
        health = self._core.health
        health.sent(slot)
        try:
            conn.send(frame, call.deadline_ns, now)
        except Lost as exc:
            conn.close()
            if hedge:
                health.lost(slot)
                return None
            wait = call.lost(slot, exc, conn.ch.fatal, others_pending=False)
            if wait:
                time.sleep(wait / 1e9)
            return None
        return Leg(conn, req_id, slot, now, hedge)

    def _pick(self, call: Call) -> Slot:
        health = self._core.health
        slot = health.choose(call.tried) or health.choose()
        if slot is not None:
            return slot
        for due in health.due():  # nothing is up: check the rested endpoints now
            if due.index not in call.tried and self._pools.probe(due):
                return due
        raise call.unavailable()

    def acquire_hedge(self, call: Call, first: Slot) -> tuple[SyncConn, Slot] | None:
        """A connection for a hedge copy: another up endpoint if there is one, else another
        connection to the same one; None when none can be had (the hedge is skipped).  With
        no idle connection there this connects inline, so a hedge can wait up to the
        connect timeout: ``connect()`` first to pre-open the pools."""
        if not self._core.hedge_allowed():
            return None
        health = self._core.health
        slot = health.choose((first.index,)) or (first if first.state is _UP else None)
        if slot is None:
            return None
        try:
            conn = self._pools.acquire(slot, call)
        except ConnectFailed:
            return None
        return None if conn is None else (conn, slot)

    def release(self, conn: SyncConn) -> None:
        """Give ``conn`` back to the pool (or close it)."""
        self._pools.release(conn)
