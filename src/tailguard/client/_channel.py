"""Per-connection protocol state shared by the sync and async transports.

A ``Channel`` turns received bytes into messages (one ``FrameReader`` and one decoder per
connection), checks the handshake, encodes outgoing frames (one encoder per connection,
frame size checked against ``Welcome.max_frame`` so an oversize request is refused locally
instead of costing the connection), hands out request ids, and sorts what arrives:

- a ``Reply`` to an abandoned id (a losing hedge copy or a timed-out call) is discarded
  and counted (``losers_ignored`` / ``late_ignored``);
- a ``Reply`` with id 0 and an error status is connection-level (e.g. FRAME_TOO_LARGE
  before the server closes) and kept as ``fatal``;
- ``Notice(draining)`` marks the connection draining and its endpoint DRAINING;
- anything else (replies, pongs) is returned to the transport to match with its callers.

Owned by whoever owns the connection: one thread at a time (sync) or the event loop (async).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

import msgspec

from tailguard.client._core import make_encoder
from tailguard.client._errors import ConnectFailed, InvalidRequest, error_from_status
from tailguard.schema.frames import FrameReader, FrameTooLarge, client_decoder
from tailguard.schema.wire import (
    PROTOCOL_VERSIONS,
    Notice,
    Ping,
    Pong,
    Refused,
    Reply,
    Request,
    Status,
    Welcome,
)

if TYPE_CHECKING:
    from tailguard.client._core import Core
    from tailguard.client._health import Slot

__all__ = ["Channel", "Lost"]

_pack_into = struct.Struct(">I").pack_into
_FRAME_TOO_LARGE = Status.FRAME_TOO_LARGE


class Lost(Exception):
    """The connection is unusable (closed by the peer, reset, or an undecodable stream)."""


class Channel:
    """One connection's codec, ids and message sorting (see the module docstring)."""

    __slots__ = ("_decode", "_encode_into", "_feed", "abandoned", "core", "draining", "fatal", "next_id",
                 "slot", "welcome")

    def __init__(self, core: Core, slot: Slot) -> None:
        self.core = core
        self.slot = slot
        self._feed = FrameReader(core.max_reply_frame).feed
        self._decode = client_decoder().decode
        self._encode_into = make_encoder().encode_into
        self.next_id = 0
        #: id -> True for a losing hedge copy, False for a timed-out call.
        self.abandoned: dict[int, bool] = {}
        self.draining = False
        self.fatal: Reply | None = None
        self.welcome: Welcome | None = None

    def take_id(self) -> int:
        """A fresh request id (ids start at 1; 0 marks connection-level errors)."""
        self.next_id += 1
        return self.next_id

    def encode(self, msg: Request | Ping) -> bytearray:
        """One complete frame for ``msg``.  Raises ``InvalidRequest`` (FRAME_TOO_LARGE) when it
        exceeds the server's ``max_frame``, or when a value cannot be encoded."""
        buf = bytearray()
        try:
            self._encode_into(msg, buf, 4)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            raise InvalidRequest(f"request cannot be encoded: {exc}", status=Status.INVALID_REQUEST,
                                 endpoint=self.slot.label) from exc
        size = len(buf) - 4
        limit = self.welcome.max_frame if self.welcome is not None else 0
        if limit and size > limit:
            raise InvalidRequest(f"request frame of {size} bytes exceeds the server's max_frame of {limit}",
                                 status=_FRAME_TOO_LARGE, endpoint=self.slot.label)
        _pack_into(buf, 0, size)
        return buf

    def messages(self, data: bytes) -> list[object]:
        """Decode every complete frame in ``data`` (raises ``Lost`` on an unusable stream)."""
        try:
            frames = self._feed(data)
            decode = self._decode
            return [decode(f) for f in frames]
        except (FrameTooLarge, msgspec.DecodeError) as exc:
            raise Lost(f"undecodable reply stream: {exc}") from exc

    def handshake(self, msg: object) -> Welcome:
        """Check the server's first message: a ``Welcome`` with a version we speak."""
        label = self.slot.label
        if type(msg) is Refused:
            err = error_from_status(msg.status, msg.error, endpoint=label)
            raise ConnectFailed(f"{label} refused the handshake: {msg.error}", status=err.status,
                                number=msg.status, endpoint=label)
        if type(msg) is not Welcome:
            raise ConnectFailed(f"{label} answered Hello with {type(msg).__name__}", endpoint=label)
        if msg.version not in PROTOCOL_VERSIONS:
            raise ConnectFailed(f"{label} chose protocol version {msg.version}, we speak "
                                f"{list(PROTOCOL_VERSIONS)}", status=Status.UNSUPPORTED_VERSION,
                                endpoint=label)
        self.welcome = msg
        self.slot.welcome = msg
        return msg

    def sort(self, msg: object) -> Reply | Pong | None:
        """Route one post-handshake message; returns it when a caller should see it."""
        t = type(msg)
        if t is Reply:
            assert isinstance(msg, Reply)
            loser = self.abandoned.pop(msg.id, None)
            if loser is not None:
                self.core.stats.inc("losers_ignored" if loser else "late_ignored")
                return None
            if msg.id == 0 and msg.status:
                self.fatal = msg
                return None
            return msg
        if t is Pong:
            assert isinstance(msg, Pong)
            return msg
        if t is Notice:
            assert isinstance(msg, Notice)
            if msg.state == "draining":
                self.draining = True
                self.core.health.mark_draining(self.slot)
        return None

    def abandon(self, req_id: int, loser: bool) -> None:
        """Stop waiting for ``req_id``; its reply will be discarded and counted."""
        self.abandoned[req_id] = loser
