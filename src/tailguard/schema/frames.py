"""Length-prefixed framing: a 4-byte big-endian payload length, then the msgpack payload.

``FrameReader`` turns a byte stream into frames incrementally (data may arrive split or
several frames at once); a declared length over ``max_frame`` is a protocol error the reader
cannot recover from (the stream cannot be resynchronised), so the connection is closed after
an error reply.  ``Codec`` holds the msgspec encoder and decoders, made once per connection
side and reused.  Owned by one thread (a connection's event loop).
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from tailguard.schema.wire import ClientMessage, ServerMessage

__all__ = ["DEFAULT_MAX_FRAME", "FrameTooLarge", "FrameReader", "HEADER", "encode_frame", "client_decoder",
           "server_decoder"]

HEADER = 4
DEFAULT_MAX_FRAME = 1 << 20
_LEN = struct.Struct(">I")
_pack_len = _LEN.pack
_unpack_len = _LEN.unpack_from


class FrameTooLarge(Exception):
    """A frame declared a length over the reader's maximum (the stream is unusable after it)."""

    def __init__(self, length: int, limit: int) -> None:
        self.length = length
        self.limit = limit
        super().__init__(f"frame of {length} bytes exceeds the limit of {limit} bytes")


class FrameReader:
    """Incremental frame splitter.  ``feed(data)`` returns the complete payloads so far."""

    __slots__ = ("_buf", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Append ``data``; return every complete frame payload (may be empty).

        Raises ``FrameTooLarge`` as soon as a header declares too long a frame, before the
        body is buffered, so an oversize frame never costs its size in memory.
        """
        buf = self._buf
        if not buf and len(data) >= HEADER:
            # Fast path: no partial frame pending; slice frames straight out of ``data``.
            mv = memoryview(data)
            out: list[bytes] = []
            pos, end = 0, len(mv)
            while end - pos >= HEADER:
                (n,) = _unpack_len(mv, pos)
                if n > self.max_frame:
                    raise FrameTooLarge(n, self.max_frame)
                if end - pos - HEADER < n:
                    break
                out.append(bytes(mv[pos + HEADER : pos + HEADER + n]))
                pos += HEADER + n
            if pos < end:
                buf += mv[pos:]
                self._check_head()
            return out
        buf += data
        return self._drain()

    def _check_head(self) -> None:
        buf = self._buf
        if len(buf) >= HEADER:
            (n,) = _unpack_len(buf, 0)
            if n > self.max_frame:
                raise FrameTooLarge(n, self.max_frame)

    def _drain(self) -> list[bytes]:
        buf = self._buf
        out: list[bytes] = []
        pos, end = 0, len(buf)
        while end - pos >= HEADER:
            (n,) = _unpack_len(buf, pos)
            if n > self.max_frame:
                del buf[:pos]
                raise FrameTooLarge(n, self.max_frame)
            if end - pos - HEADER < n:
                break
            out.append(bytes(buf[pos + HEADER : pos + HEADER + n]))
            pos += HEADER + n
        if pos:
            del buf[:pos]
        return out


def encode_frame(encoder: msgspec.msgpack.Encoder, message: Any) -> bytes:
    """One complete frame (header + msgpack payload) for ``message``."""
    payload = encoder.encode(message)
    return _pack_len(len(payload)) + payload


def server_decoder() -> msgspec.msgpack.Decoder[ClientMessage]:
    """A decoder for what a server receives (Hello, Request, Ping)."""
    return msgspec.msgpack.Decoder(ClientMessage)


def client_decoder() -> msgspec.msgpack.Decoder[ServerMessage]:
    """A decoder for what a client receives (Welcome, Refused, Reply, Pong, Notice)."""
    return msgspec.msgpack.Decoder(ServerMessage)
