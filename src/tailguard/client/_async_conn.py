"""An asyncio-client connection: a ``Protocol`` that pipelines requests by id.

Any number of requests may be in flight on one connection; ``pending`` maps each id to the
future its caller awaits, and ``data_received`` resolves them as replies arrive, in any
order.  When the connection is lost every pending future fails with ``Lost`` (the callers
decide whether to retry).  A draining connection takes no new requests and closes once its
last pending reply has arrived.

Owned by the event loop that opened it; no method may be called from another thread.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from tailguard.client._channel import Channel, Lost
from tailguard.client._endpoint import Transport
from tailguard.client._errors import ConnectFailed
from tailguard.schema.wire import Ping, Pong, Reply

if TYPE_CHECKING:
    from tailguard.client._core import Core
    from tailguard.client._health import Slot

__all__ = ["AsyncConn"]


class AsyncConn(asyncio.Protocol):
    """One pipelined connection of the async client (see the module docstring)."""

    def __init__(self, ch: Channel, loop: asyncio.AbstractEventLoop) -> None:
        self.ch = ch
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[Reply | Pong]] = {}
        self.welcomed: asyncio.Future[None] = loop.create_future()
        self.closed = False

    @classmethod
    async def open(cls, core: Core, slot: Slot, timeout_s: float) -> AsyncConn:
        """Connect to ``slot`` and complete the handshake within ``timeout_s`` seconds.

        Raises ``ConnectFailed`` (socket and timeout errors are translated here)."""
        loop = asyncio.get_running_loop()
        conn = cls(Channel(core, slot), loop)
        ep = slot.endpoint
        try:
            async with asyncio.timeout(timeout_s):
                if ep.transport is Transport.UNIX:
                    await loop.create_unix_connection(lambda: conn, ep.path)
                else:
                    await loop.create_connection(lambda: conn, ep.host, ep.port)
                assert conn.transport is not None
                conn.transport.write(core.hello_frame)
                await conn.welcomed
        except (OSError, ConnectFailed) as exc:  # TimeoutError is an OSError
            conn.close()
            core.stats.inc("connect_failures")
            if isinstance(exc, ConnectFailed):
                raise
            raise ConnectFailed(f"cannot connect to {slot.label}: {exc or type(exc).__name__}",
                                endpoint=slot.label) from exc
        except BaseException:
            conn.close()
            raise
        core.stats.inc("connections_opened")
        return conn

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it: no isinstance.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        ch = self.ch
        try:
            msgs = ch.messages(data)
        except Lost as exc:
            self._fail(exc)
            return
        pending = self.pending
        for m in msgs:
            if not self.welcomed.done():
                try:
                    ch.handshake(m)
                except ConnectFailed as exc:
                    self.welcomed.set_exception(exc)
                    self.close()
                    return
                self.welcomed.set_result(None)
                continue
            r = ch.sort(m)
            if r is not None:
                fut = pending.pop(r.id, None)
                if fut is not None and not fut.done():
                    fut.set_result(r)
        if ch.draining and not pending:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(Lost(str(exc) if exc else "closed by the server"))

    def _fail(self, exc: Lost) -> None:
        self.closed = True
        if not self.welcomed.done():
            label = self.ch.slot.label
            self.welcomed.set_exception(ConnectFailed(f"{label} closed during the handshake: {exc}",
                                                      endpoint=label))
            self.welcomed.exception()  # retrieved: the opener may have gone (timeout)
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    # -- use -----------------------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        """Open, welcomed, not draining and not broken."""
        ch = self.ch
        return not self.closed and not ch.draining and ch.fatal is None and len(ch.abandoned) <= 1024

    def send(self, frame: bytearray, req_id: int) -> asyncio.Future[Reply | Pong]:
        """Write ``frame`` (request ``req_id``) and return the future of its reply; the future
        fails with ``Lost`` if the connection is lost first."""
        fut: asyncio.Future[Reply | Pong] = self.loop.create_future()
        if self.closed or self.transport is None or self.transport.is_closing():
            fut.set_exception(Lost("connection already closed"))
            return fut
        self.pending[req_id] = fut
        self.transport.write(frame)
        return fut

    def abandon(self, req_id: int, loser: bool) -> None:
        """Stop waiting for ``req_id`` (its reply, if it comes, is discarded and counted)."""
        fut = self.pending.pop(req_id, None)
        if fut is not None and not self.closed:
            self.ch.abandon(req_id, loser)
        if self.ch.draining and not self.pending:
            self.close()

    async def ping(self, timeout_s: float) -> str:
        """Send ``Ping`` and await its ``Pong``; returns the server state.  Raises ``Lost``."""
        req_id = self.ch.take_id()
        fut = self.send(self.ch.encode(Ping(req_id)), req_id)
        try:
            async with asyncio.timeout(timeout_s):
                got = await fut
        except TimeoutError as exc:
            self.pending.pop(req_id, None)
            raise Lost("no Pong within the health-check timeout") from exc
        return got.state if isinstance(got, Pong) else "unexpected reply"

    def close(self) -> None:
        """Close the transport (pending futures fail with ``Lost`` when it is gone)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()
