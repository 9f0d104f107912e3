"""The asyncio client: ``await AsyncClient.predict(...)`` over pipelined connections.

Loop ownership: an ``AsyncClient`` belongs to the event loop it is first used on; every
method must be called from that loop.  Each endpoint has up to ``pool_size`` connections,
and each carries any number of requests at once (pipelining, matched by id).  A call uses
the least-loaded open connection and opens another in the background when that one is busy
and the pool has room.  Down endpoints are health-checked by one background task (started
when an endpoint first goes down) and by calls that find no endpoint up.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from typing import Any

from tailguard.client._async_conn import AsyncConn
from tailguard.client._async_legs import ALeg, await_legs
from tailguard.client._async_pool import Pools
from tailguard.client._call import Call
from tailguard.client._core import Core
from tailguard.client._endpoint import Endpoint
from tailguard.client._errors import ClientError, ConnectFailed, Timeout, Unavailable
from tailguard.client._health import Balance, EndpointState, Slot
from tailguard.client._hedge import HedgePolicy
from tailguard.client._load import EndpointStats
from tailguard.client._result import BatchResult, Result, batch_result, single_result
from tailguard.clock import Clock
from tailguard.schema.frames import DEFAULT_MAX_FRAME
from tailguard.schema.wire import Reply, Request, Welcome

__all__ = ["AsyncClient"]


class AsyncClient:
    """An asyncio tailguard client; the arguments are those of ``Client`` (see there).

    ``pool_size`` here is the number of pipelined connections per endpoint (default 1: one
    connection carries many concurrent requests).  ``warm_connections``: connections per
    endpoint that ``connect`` opens and the client keeps open (reopened in the background
    after a loss; ``pool_size`` is raised to it).  Against a replica of several worker
    processes behind one listener (``tailguard serve --workers N``) a few of them land on
    different workers, so a request whose connection died with its worker is re-sent at once
    on another one instead of after a new connect and handshake.  ``clock`` must advance with the event
    loop's clock (timers are the loop's), so tests use the default.
    """

    def __init__(
        self,
        endpoints: str | Endpoint | Sequence[str | Endpoint],
        *,
        pool_size: int = 1,
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
        self._pools = Pools(core, health_interval_s, warm=warm_connections)

    # -- public API --------------------------------------------------------------------------
    async def predict(
        self, keys: Any, context: Mapping[str, Any] | None = None, *, priority: str | None = None,
        budget_us: int | None = None, timeout_s: float | None = None, idempotent: bool = True,
        traceparent: str = "",
    ) -> Result:
        """One decision; the arguments and errors are those of ``Client.predict``."""
        call = self._core.new_call(keys, context, False, priority, budget_us, timeout_s, idempotent,
                                   traceparent)
        reply, leg, hedged, welcome = await self._run(call)
        return single_result(reply, welcome, leg.slot.label, hedged, leg.hedge, call.attempts,
                             (self._now() - call.start_ns) / 1e9)

    async def predict_batch(
        self, keys: Any, context: Mapping[str, Any] | None = None, *, priority: str | None = None,
        budget_us: int | None = None, timeout_s: float | None = None, idempotent: bool = True,
        traceparent: str = "",
    ) -> BatchResult:
        """Decisions for many keys; the arguments and errors are those of ``Client.predict_batch``."""
        call = self._core.new_call(keys, context, True, priority, budget_us, timeout_s, idempotent,
                                   traceparent)
        reply, leg, hedged, welcome = await self._run(call)
        return batch_result(reply, welcome, leg.slot.label, hedged, leg.hedge, call.attempts,
                            (self._now() - call.start_ns) / 1e9)

    async def connect(self) -> int:
        """Open (or check) a connection to every up endpoint now, concurrently; returns how
        many answered (the others are marked down).  Raises ``Unavailable`` when none did."""
        core = self._core
        slots = [s for s in core.health.slots if s.state is EndpointState.UP]
        calls = [Call(core, Request(0), core.connect_timeout_s, self._now()) for _ in slots]
        got = await asyncio.gather(*(self._pools.acquire(s, c) for s, c in zip(slots, calls, strict=True)),
                                   return_exceptions=True)
        errors = [g for g in got if isinstance(g, ClientError)]
        for g in got:
            if isinstance(g, BaseException) and not isinstance(g, ClientError):
                raise g
        reached = sum(1 for g in got if g is not None and not isinstance(g, BaseException))
        await asyncio.gather(*(self._pools.fill(s) for s, g in zip(slots, got, strict=True)
                               if g is not None and not isinstance(g, BaseException)))
        if not reached:
            raise Unavailable("no endpoint could be connected", errors=errors,
                              retry_after_s=core.health.next_due_s())
        return reached

    async def welcome(self) -> Welcome:
        """The ``Welcome`` of an up endpoint, connecting first if none has been reached yet.
        Raises ``Unavailable``."""
        for _ in range(2):
            for slot in self._core.health.slots:
                if slot.welcome is not None and slot.state is EndpointState.UP:
                    return slot.welcome
            await self.connect()
        raise Unavailable("no up endpoint has welcomed this client")

    async def check_health(self) -> dict[str, str]:
        """Health-check every endpoint whose backoff has passed now; returns the states."""
        return await self._pools.check_health()

    def statistics(self) -> dict[str, Any]:
        """The counters of ``Client.statistics``, with ``connections`` (open, by address)
        and ``in_flight`` (requests awaiting replies, by address) instead of ``idle``."""
        out = self._core.statistics()
        out.update(self._pools.statistics())
        return out

    def endpoint_stats(self) -> list[EndpointStats]:
        """Per endpoint: the figures of ``Client.endpoint_stats``."""
        return self._core.endpoint_stats()

    async def aclose(self) -> None:
        """Close every connection and stop the health task (idempotent)."""
        await self._pools.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- calls ---------------------------------------------------------------------------------
    async def _run(self, call: Call) -> tuple[Reply, ALeg, bool, Welcome]:
        try:
            if self._pools.closed:
                raise Unavailable("the client is closed")
            health = self._core.health
            while True:
                legs = [await self._launch(call)]
                won = timed_out = False
                try:
                    got = await await_legs(self, call, legs)
                    won = not isinstance(got, int)
                except Timeout:
                    timed_out = True
                    raise
                finally:
                    now = self._now() if legs else 0
                    for leg in legs:  # still out (lost the race, timed out or cancelled)
                        leg.conn.abandon(leg.req_id, won)
                        health.abandoned(leg.slot, now - leg.sent_ns, now, timed_out=timed_out, lost_race=won)
                if isinstance(got, int):
                    if got > 0:
                        await asyncio.sleep(got / 1e9)
                    continue
                return got
        except ClientError as exc:
            self._core.stats.error(exc.code)
            raise

    async def _launch(self, call: Call) -> ALeg:
        health = self._core.health
        while True:
            # Fast path, no awaits: an up endpoint with an open connection.
            slot = health.choose(call.tried) or health.choose() or await self._pick(call)
            conn = self._pools.ready(slot)
            if conn is None:
                try:
                    conn = await self._pools.acquire(slot, call)
                except ConnectFailed as err:
                    call.connect_failed(slot, err)
                    continue
            if conn is None:
                continue
            call.begin(slot)
            leg = self.send_copy(call, conn, slot, hedge=False)
            if leg is not None:
                return leg

    def send_copy(self, call: Call, conn: AsyncConn, slot: Slot, hedge: bool) -> ALeg | None:
        """Send one copy of ``call`` on ``conn`` (never blocks).  Raises Timeout when the
        budget is spent (None instead for a hedge: the first copy may still answer)."""
        now = self._now()
        req_id = conn.ch.take_id()
        msg = call.wire(req_id, now)
        if msg is None or now >= call.deadline_ns:
            if hedge:
                return None
            raise call.timed_out()
        fut = conn.send(conn.ch.encode(msg), req_id)
        self._core.health.sent(slot)
        return ALeg(conn, req_id, slot, now, hedge, fut)

    async def acquire_hedge(self, call: Call, first: ALeg) -> ALeg | None:
        """Send a hedge copy: to another up endpoint if there is one, else on another
        connection to the same endpoint.  None when neither can be had right now."""
        core = self._core
        if not core.hedge_allowed():
            return None
        slot = core.health.choose((first.slot.index,))
        avoid = None
        if slot is None:
            slot, avoid = first.slot, first.conn
        try:
            conn = await self._pools.acquire(slot, call, avoid=avoid)
        except ConnectFailed:
            return None
        if conn is None:
            return None
        leg = self.send_copy(call, conn, slot, hedge=True)
        if leg is not None:
            core.stats.inc("hedges_sent")
        return leg

    async def _pick(self, call: Call) -> Slot:
        health = self._core.health
        slot = health.choose(call.tried) or health.choose()
        if slot is not None:
            return slot
        for due in health.due():
            if due.index not in call.tried and await self._pools.probe(due):
                return due
        raise call.unavailable()
