"""The JetStream side of the ingest worker: connection, the durable pull consumer, pulling.

Pulling: nats-py's ``fetch`` waits on each message with its own timeout (about 35 µs per
message here, 28k messages/s at best), so the worker pulls on its own: one inbox
subscription whose callback appends to a list, and pull requests (``$JS.API.CONSUMER.MSG.
NEXT``) kept in flight so that up to two batches are always requested.  While the worker
folds one batch the server already sends the next (about 135k messages/s delivered on
loopback).  Credits count the messages requested and not yet delivered; a request that
expires reports how many it did not deliver (``Nats-Pending-Messages``), which is given back.

The consumer: durable, ``AckPolicy.ALL`` (acknowledging the last message of a committed
range acknowledges the range: one ack per commit), filtered on the worker's subject.  At the
start of every session ``reconcile_consumer`` makes it resume right after the worker's applied
position (its checkpoint is the truth, see ``ingest_checkpoint``): a consumer in step
(acknowledged exactly that far, nothing pending) is kept; otherwise, on a stream with limits
retention, it is recreated to start at ``applied + 1``, so no message after a crash waits
for ``ack_wait`` to be redelivered.  On interest or work-queue streams, where deleting the
consumer may delete messages, it is kept: unacknowledged messages come back after
``ack_wait`` and those at or below the applied position count as duplicates.

Everything here runs on the worker's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the NATS ingest worker needs nats-py: pip install 'tailguard[nats]'") from exc

import msgspec

from tailguard.clock import Clock

__all__ = ["NATS_FAILURES", "ConsumerGone", "Msg", "NatsClient", "Puller", "connect", "dead_letter_stream",
           "reconcile_consumer", "stream_seq"]

#: What a lost connection, a refused connect, a missing reply or a JetStream API error raise.
NATS_FAILURES = (nats.errors.Error, OSError, asyncio.TimeoutError)


class ConsumerGone(nats.errors.Error):
    """The server ended the pull consumer (deleted, or moved): the session starts again."""


async def _quiet(*_: Any) -> None:
    return None


async def connect(url: str, connect_timeout_s: float, name: str = "tailguard-ingest") -> NatsClient:
    """A connection that does not reconnect by itself: the worker resynchronises instead."""
    return await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0,
                              connect_timeout=max(1, round(connect_timeout_s)), ping_interval=2,
                              max_outstanding_pings=2, error_cb=_quiet, disconnected_cb=_quiet,
                              closed_cb=_quiet, name=name)


def stream_seq(reply: str) -> int:
    """The stream sequence of a JetStream message, from its reply subject
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>...``; v2 adds domain and account)."""
    tokens = reply.split(".")
    return int(tokens[5] if len(tokens) == 9 else tokens[7])


async def dead_letter_stream(js: JetStreamContext, subject: str) -> bool:
    """Whether a stream captures ``subject`` (dead letters are then published with an ack)."""
    try:
        await js.find_stream_name_by_subject(subject)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def reconcile_consumer(js: JetStreamContext, stream: str, durable: str, subject: str, applied: int, *,
                             ack_wait_s: float, max_ack_pending: int) -> bool:
    """Make ``durable`` deliver from ``applied + 1`` (see the module doc); True when it was
    (re)created, False when the existing one was kept."""
    try:
        ci = await js.consumer_info(stream, durable)
    except nats.js.errors.NotFoundError:
        ci = None
    if ci is not None:
        c = ci.config
        same = c.filter_subject == subject and c.ack_policy is AckPolicy.ALL
        floor = ci.ack_floor.stream_seq if ci.ack_floor is not None else 0
        if same and floor == applied and not ci.num_ack_pending:
            return False
        info = await js.stream_info(stream)
        if same and info.config.retention not in (None, RetentionPolicy.LIMITS):
            return False
        await js.delete_consumer(stream, durable)
    config = ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.ALL, ack_wait=ack_wait_s,
                            max_ack_pending=max_ack_pending, filter_subject=subject,
                            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=applied + 1)
    await js.add_consumer(stream, config)
    return True


class Puller:
    """Keeps pull requests for up to two batches in flight and hands over what arrived."""

    def __init__(self, nc: NatsClient, stream: str, durable: str, batch: int, expires_s: float,
                 clock: Clock) -> None:
        self.nc, self.batch, self.clock = nc, batch, clock
        self.expires_ns = round(expires_s * 1e9)
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._request = msgspec.json.encode({"batch": batch, "expires": self.expires_ns})
        self._inbox = ""
        self._buf: list[Msg] = []
        self._wake = asyncio.Event()
        self.credits = 0
        self._heard_ns = clock.now_ns()
        self._gone = ""
        self.requests = 0

    async def start(self) -> None:
        """Subscribe the inbox (call once, before ``take``)."""
        self._inbox = self.nc.new_inbox()
        await self.nc.subscribe(self._inbox, cb=self._on_msg)

    async def _on_msg(self, m: Msg) -> None:
        h = m.headers
        status = None if h is None else h.get("Status")
        if status is None:
            self._buf.append(m)
            self.credits -= 1
        elif status in ("404", "408", "409"):
            assert h is not None
            left = h.get("Nats-Pending-Messages")
            # Without a count, forget every credit: a surplus request merely expires.
            self.credits = max(0, self.credits - int(left)) if left else 0
            if status == "409" and "Deleted" in h.get("Description", ""):
                self._gone = h.get("Description", "consumer deleted")
        self._heard_ns = self.clock.now_ns()
        self._wake.set()

    async def take(self, wait_s: float) -> list[Msg]:
        """What arrived since the last call, waiting up to ``wait_s`` when nothing has; raises
        when the connection or the consumer is gone."""
        if self.credits > 0 and self.clock.now_ns() - self._heard_ns > 2 * self.expires_ns + 1_000_000_000:
            self.credits = 0  # a request's end was lost (server restarted): ask again
        if self.credits < self.batch:
            await self.nc.publish(self._next_subject, self._request, reply=self._inbox)
            self.credits += self.batch
            self.requests += 1
        if not self._buf:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)
        if self._gone:
            raise ConsumerGone(self._gone)
        if self.nc.is_closed or not self.nc.is_connected:
            raise nats.errors.ConnectionClosedError
        msgs, self._buf = self._buf, []
        return msgs
