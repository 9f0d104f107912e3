"""The blocking client's wait loop: one or two copies of a call in flight, first reply wins.

``await_legs`` waits with a selector on every copy's socket until a reply comes, the hedge
delay passes (then a second copy is sent on another connection) or the call's deadline
passes.  A copy whose connection is lost or that gets a retryable error reply is dropped;
while another copy is out the call keeps waiting for it.  When no copy is left the call
decides (``Call.lost`` / ``Call.reply_failed``) whether to retry.

Runs on the calling thread; the connections in ``legs`` are checked out to it.
"""

from __future__ import annotations

import selectors
from typing import TYPE_CHECKING

from tailguard.client._channel import Lost
from tailguard.client._sync_conn import SyncConn, new_selector
from tailguard.schema.wire import Reply, Welcome

if TYPE_CHECKING:
    from tailguard.client._call import Call
    from tailguard.client._health import Slot
    from tailguard.client._sync import Client

__all__ = ["Leg", "await_legs"]


class Leg:
    """One copy of a call in flight: its connection, id, endpoint and send time (ns)."""

    __slots__ = ("conn", "hedge", "req_id", "sent_ns", "slot")

    def __init__(self, conn: SyncConn, req_id: int, slot: Slot, sent_ns: int, hedge: bool) -> None:
        self.conn = conn
        self.req_id = req_id
        self.slot = slot
        self.sent_ns = sent_ns
        self.hedge = hedge


def _ready(legs: list[Leg], timeout_s: float, sel: selectors.BaseSelector | None) -> list[Leg]:
    if len(legs) == 1:
        leg = legs[0]
        return legs if leg.conn.sel.select(timeout_s) else []
    assert sel is not None
    return [key.data for key, _ in sel.select(timeout_s)]


def _selector(legs: list[Leg]) -> selectors.BaseSelector | None:
    if len(legs) < 2:
        return None
    sel = new_selector()
    for leg in legs:
        sel.register(leg.conn.sock, selectors.EVENT_READ, leg)
    return sel


def await_legs(client: Client, call: Call, legs: list[Leg]) -> tuple[Reply, Leg, bool, Welcome] | int:
    """Wait for the first good reply among ``legs`` (see the module docstring).

    Returns ``(reply, winning leg, hedged, welcome)``, or the ns to wait before retrying.
    Legs that finish are removed from ``legs`` and their connections given back; the caller
    abandons whatever is left.  Raises the call's final error (Timeout included).
    """
    now_ns = client._now
    hedge_at = call.hedge_at_ns(legs[0].slot, legs[0].sent_ns)
    hedged = False
    sel: selectors.BaseSelector | None = None
    try:
        while True:
            now = now_ns()
            if hedge_at and now >= hedge_at:
                hedge_at = 0
                second = _send_hedge(client, call, legs[0])
                if second is not None:
                    hedged = True
                    legs.append(second)
                    sel = _selector(legs)
                now = now_ns()
            if now >= call.deadline_ns:
                raise call.timed_out()
            wake = min(hedge_at, call.deadline_ns) if hedge_at else call.deadline_ns
            for leg in _ready(legs, (wake - now) / 1e9, sel):
                conn = leg.conn
                try:
                    conn.pump()
                except Lost as exc:
                    legs.remove(leg)
                    if sel is not None:
                        sel.close()
                    sel = _selector(legs)
                    conn.close()
                    wait = call.lost(leg.slot, exc, conn.ch.fatal, bool(legs))
                    if wait >= 0:
                        return wait
                    continue
                reply = conn.inbox.pop(leg.req_id, None)
                if reply is None:
                    continue
                assert isinstance(reply, Reply)
                legs.remove(leg)
                if sel is not None:
                    sel.close()
                sel = _selector(legs)
                welcome = conn.ch.welcome
                client.release(conn)
                now = now_ns()
                call.core.health.replied(leg.slot, reply.status, now - leg.sent_ns, now)
                if reply.status < 10:
                    assert welcome is not None
                    call.core.record_win(leg.slot, now - leg.sent_ns, leg.hedge)
                    return reply, leg, hedged, welcome
                wait = call.reply_failed(leg.slot, reply, bool(legs))
                if wait >= 0:
                    return wait
    finally:
        if sel is not None:
            sel.close()


def _send_hedge(client: Client, call: Call, first: Leg) -> Leg | None:
    got = client.acquire_hedge(call, first.slot)
    if got is None:
        return None
    conn, slot = got
    leg = client.send_copy(call, conn, slot, hedge=True)
    if leg is not None:
        call.core.stats.inc("hedges_sent")
    return leg
