"""The async client's wait loop: one or two copies of a call in flight, first reply wins.

The same rules as the blocking client's ``_sync_legs``: wait for the copies' futures until
a reply, the hedge delay (then send a second copy) or the deadline; drop copies that fail
while another is out; let the ``Call`` decide about retries when none is left.

Runs in the task that made the call, on the client's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from tailguard.client._channel import Lost
from tailguard.schema.wire import Pong, Reply, Welcome

if TYPE_CHECKING:
    from tailguard.client._async import AsyncClient
    from tailguard.client._async_conn import AsyncConn
    from tailguard.client._call import Call
    from tailguard.client._health import Slot

__all__ = ["ALeg", "await_legs"]

_FIRST = asyncio.FIRST_COMPLETED


class _Expired(Exception):
    """Set on a reply future whose call's deadline passed (never leaves this module)."""


def _expire(fut: asyncio.Future[Reply | Pong]) -> None:
    if not fut.done():
        fut.set_exception(_Expired())


class ALeg:
    """One copy of a call in flight: connection, id, endpoint, send time (ns), reply future."""

    __slots__ = ("conn", "fut", "hedge", "req_id", "sent_ns", "slot")

    def __init__(self, conn: AsyncConn, req_id: int, slot: Slot, sent_ns: int, hedge: bool,
                 fut: asyncio.Future[Reply | Pong]) -> None:
        self.conn = conn
        self.req_id = req_id
        self.slot = slot
        self.sent_ns = sent_ns
        self.hedge = hedge
        self.fut = fut


async def await_legs(
    client: AsyncClient, call: Call, legs: list[ALeg]
) -> tuple[Reply, ALeg, bool, Welcome] | int:
    """Await the first good reply among ``legs``: ``(reply, leg, hedged, welcome)``, or the
    ns to wait before retrying.  Finished legs are removed from ``legs``; the caller abandons
    the rest.  Raises the call's final error (Timeout included)."""
    now_ns = client._now
    hedge_at = call.hedge_at_ns(legs[0].slot, legs[0].sent_ns)
    hedged = False
    while True:
        now = now_ns()
        if hedge_at and now >= hedge_at:
            hedge_at = 0
            second = await client.acquire_hedge(call, legs[0])
            if second is not None:
                hedged = True
                legs.append(second)
            now = now_ns()
        if now >= call.deadline_ns:
            raise call.timed_out()
        wake = min(hedge_at, call.deadline_ns) if hedge_at else call.deadline_ns
        if len(legs) == 1 and not hedge_at:
            # The common case: await the one future, with a timer that fails it at the
            # deadline (lighter than asyncio.wait's waiter, set and callbacks).
            fut = legs[0].fut
            if not fut.done():
                timer = asyncio.get_running_loop().call_later((wake - now) / 1e9, _expire, fut)
                try:
                    with contextlib.suppress(Exception):  # Lost or _Expired: examined below
                        await fut
                finally:
                    timer.cancel()
        elif not any(leg.fut.done() for leg in legs):
            await asyncio.wait([leg.fut for leg in legs], timeout=(wake - now) / 1e9, return_when=_FIRST)
        for leg in [leg for leg in legs if leg.fut.done()]:
            legs.remove(leg)
            exc = leg.fut.exception()
            if isinstance(exc, _Expired):
                legs.append(leg)  # still in flight: the caller abandons it
                raise call.timed_out()
            if exc is not None:
                lost = exc if isinstance(exc, Lost) else Lost(str(exc))
                wait = call.lost(leg.slot, lost, leg.conn.ch.fatal, bool(legs))
                if wait >= 0:
                    return wait
                continue
            reply = leg.fut.result()
            assert isinstance(reply, Reply)  # Ping and Request ids come from one counter
            now = now_ns()
            call.core.health.replied(leg.slot, reply.status, now - leg.sent_ns, now)
            if reply.status < 10:
                welcome = leg.conn.ch.welcome
                assert welcome is not None
                call.core.record_win(leg.slot, now - leg.sent_ns, leg.hedge)
                return reply, leg, hedged, welcome
            wait = call.reply_failed(leg.slot, reply, bool(legs))
            if wait >= 0:
                return wait
