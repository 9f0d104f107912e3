"""The binary protocol's server side: one ``BinaryConnection`` per TCP or Unix connection.

A connection must open with ``Hello`` within ``handshake_timeout_s`` or it is closed (a
client that connects and sends nothing holds no resources for long).  After the handshake
every frame is decoded with one reused msgspec decoder and handed to the dispatcher;
replies are encoded into a per-connection buffer and written once per burst.  Faults stay
local: a malformed or wrongly typed frame gets a MALFORMED / INVALID_REQUEST reply and the
connection goes on; an oversize frame gets FRAME_TOO_LARGE and the connection is closed (the
stream cannot be resynchronised); a client that stops reading makes only its own
connection stop reading (write-buffer backpressure); a vanished client's queued requests are
dropped at batch time and counted as abandoned.

Owner: the event loop thread.
"""

from __future__ import annotations

import asyncio
import os
import struct
from typing import TYPE_CHECKING, Any

import msgspec

from tailguard.schema.frames import FrameReader, FrameTooLarge, server_decoder
from tailguard.schema.wire import (
    MAGIC,
    PROTOCOL_VERSIONS,
    Hello,
    Notice,
    Ping,
    Pong,
    Refused,
    Reply,
    Request,
    Status,
    Welcome,
)
from tailguard.serve.app import adopt_transport

if TYPE_CHECKING:
    from tailguard.serve.app import App

__all__ = ["BinaryConnection"]

_LEN = struct.Struct(">I")
_pack_into = _LEN.pack_into
_HEADER = b"\0\0\0\0"


class BinaryConnection(asyncio.Protocol):
    """One client connection speaking the binary protocol (see docs/protocol.md)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.dispatcher = app.dispatcher
        self._now = app.clock.now_ns
        self._reader = FrameReader(app.config.max_frame)
        self._decoder = server_decoder()
        self._encoder = msgspec.msgpack.Encoder()
        self._out = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.greeted = False
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._paused = False

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = adopt_transport(transport)
        self.app.connections.add(self)
        self._handshake_timer = self.app.loop.call_later(
            self.app.config.handshake_timeout_s, self._handshake_expired
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.app.connections.discard(self)
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()

    def pause_writing(self) -> None:
        # The client is not reading its replies: stop reading its requests (its problem only).
        self._paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        now = self._now()
        try:
            frames = self._reader.feed(data)
        except FrameTooLarge as exc:
            self.deliver(Reply(0, int(Status.FRAME_TOO_LARGE), error=str(exc)))
            self.flush()
            self._close()
            return
        if not frames:
            return
        decode = self._decoder.decode
        submit = self.dispatcher.submit
        for frame in frames:
            if not self.greeted:
                if not self._handshake(frame):
                    return
                continue
            try:
                msg = decode(frame)
            except msgspec.ValidationError as exc:
                self._bad_frame(frame, Status.INVALID_REQUEST, str(exc))
                continue
            except msgspec.DecodeError as exc:
                self._bad_frame(frame, Status.MALFORMED, str(exc))
                continue
            t = type(msg)
            if t is Request:
                submit(msg, now, self)  # type: ignore[arg-type]
            elif t is Ping:
                d = self.dispatcher
                self.deliver(Pong(msg.id, self.app.state.value, d.in_flight))  # type: ignore[union-attr]
            else:
                self._bad_frame(frame, Status.MALFORMED, "unexpected message after the handshake")
        d = self.dispatcher
        b0 = d.batch_ns
        d.flush()
        self.flush()
        # This read's cost outside batches (decode, admission, replies written): load the
        # scheduler accounts for, refused requests included.
        d.note_ingress(len(frames), self._now() - now - (d.batch_ns - b0))

    # -- handshake -----------------------------------------------------------------------------
    def _handshake(self, frame: bytes) -> bool:
        try:
            msg = self._decoder.decode(frame)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return self._refuse(Status.MALFORMED, f"expected Hello: {exc}")
        if type(msg) is not Hello or msg.magic != MAGIC:
            return self._refuse(Status.MALFORMED, "expected Hello with magic 'tailguard'")
        common = sorted(set(msg.versions) & set(PROTOCOL_VERSIONS))
        if not common:
            return self._refuse(
                Status.UNSUPPORTED_VERSION,
                f"no common protocol version: client {msg.versions}, server {list(PROTOCOL_VERSIONS)}",
            )
        self.greeted = True
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        w = self.app.welcome
        self.deliver(Welcome(common[-1], w.server, w.service, w.max_frame, os.getpid(), w.entities,
                             w.context, w.outputs, w.rungs, w.priorities, w.model_version))
        if self.app.draining:
            self.deliver(Notice("draining"))
        self.flush()
        return True

    def _refuse(self, status: Status, message: str) -> bool:
        self.deliver(Refused(int(status), message))
        self.flush()
        self._close()
        return False

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if not self.greeted:
            self._close()

    def _bad_frame(self, frame: bytes, status: Status, message: str) -> None:
        self.dispatcher.count_error(status)
        self.deliver(Reply(_best_effort_id(frame), int(status), error=message))

    # -- ReplySink -----------------------------------------------------------------------------
    def deliver(self, reply: Any) -> None:
        """Encode ``reply`` into the outgoing buffer (sent by ``flush``)."""
        if self.closed:
            return
        out = self._out
        start = len(out)
        out += _HEADER
        self._encoder.encode_into(reply, out, start + 4)
        _pack_into(out, start, len(out) - start - 4)

    def flush(self) -> None:
        """Write the buffered replies in one call."""
        if self._out:
            if not self.closed and self.transport is not None:
                self.transport.write(bytes(self._out))
            self._out.clear()

    def notice(self, state: str) -> None:
        """Send an unsolicited ``Notice`` (e.g. draining)."""
        if self.greeted and not self.closed:
            self.deliver(Notice(state))
            self.flush()

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()


def _best_effort_id(frame: bytes) -> int:
    """The request id of a frame the typed decoder refused, if the frame is an array whose
    second element is an integer (so the client can match the error to its request)."""
    try:
        obj = msgspec.msgpack.decode(frame)
    except Exception:
        return 0
    if isinstance(obj, list) and len(obj) > 1 and isinstance(obj[1], int) and 0 <= obj[1] < 2**64:
        return obj[1]
    return 0
