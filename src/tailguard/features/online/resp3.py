"""A small sans-IO RESP3 parser for the invalidation link (push frames and plain replies).

Why not redis-py: it hands RESP3 ``invalidate`` pushes only to its private parser hooks
(``connection._parser``), and its pub/sub object reconnects and resubscribes behind the
caller's back, which would hide exactly the moments the near-cache must know about (a lost
link, a new subscription).  The listener needs few frame types and owns its socket, so it
parses RESP3 itself: feed bytes, take complete frames.

Frames: ``Push`` (``>``) for invalidations, pub/sub messages and subscription confirmations;
``ErrorReply`` for ``-``/``!``; everything else as plain Python values (bytes, int, float,
bool, None, list, dict).  Attributes (``|``) are skipped.  One owner thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["ErrorReply", "Push", "Resp3Parser", "pack_command"]


class Push(list[Any]):
    """An out-of-band push frame: ``[kind, *payload]`` (kind as bytes, e.g. ``b"invalidate"``)."""


class ErrorReply(bytes):
    """An error reply (``-ERR ...``), returned as a value so the caller decides what it means."""


class _Incomplete(Exception):
    """The buffer ends inside a frame."""


def pack_command(*args: bytes | str | int) -> bytes:
    """One command in the RESP request form (array of bulk strings)."""
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class Resp3Parser:
    """Accumulates bytes and yields complete RESP3 frames in order."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if self._pos:
            self._buf = self._buf[self._pos :]
            self._pos = 0
        self._buf += data

    def frames(self) -> list[Any]:
        """Every complete frame buffered so far (may be empty)."""
        out: list[Any] = []
        while self._pos < len(self._buf):
            try:
                value, self._pos = _parse(self._buf, self._pos)
            except _Incomplete:
                break
            out.append(value)
        return out


def _line(buf: bytes, pos: int) -> tuple[bytes, int]:
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    return buf[pos:end], end + 2


def _bulk(buf: bytes, pos: int, size: int) -> tuple[bytes, int]:
    end = pos + size
    if end + 2 > len(buf):
        raise _Incomplete
    return buf[pos:end], end + 2


def _items(buf: bytes, pos: int, count: int) -> tuple[list[Any], int]:
    items = []
    for _ in range(count):
        value, pos = _parse(buf, pos)
        items.append(value)
    return items, pos


def _parse(buf: bytes, pos: int) -> tuple[Any, int]:
    if pos >= len(buf):
        raise _Incomplete
    kind = buf[pos : pos + 1]
    head, pos = _line(buf, pos + 1)
    if kind in (b"$", b"=", b"!"):
        size = int(head)
        if size < 0:
            return None, pos
        body, pos = _bulk(buf, pos, size)
        if kind == b"!":
            return ErrorReply(body), pos
        return (body[4:] if kind == b"=" else body), pos
    if kind in (b"*", b"~", b">"):
        count = int(head)
        if count < 0:
            return None, pos
        items, pos = _items(buf, pos, count)
        return (Push(items) if kind == b">" else items), pos
    if kind == b"%":
        flat, pos = _items(buf, pos, 2 * int(head))
        return dict(zip(flat[::2], flat[1::2], strict=True)), pos
    if kind == b"|":  # attribute: metadata about the next frame, which follows
        _, pos = _items(buf, pos, 2 * int(head))
        return _parse(buf, pos)
    return _simple(kind, head), pos


def _simple(kind: bytes, head: bytes) -> Any:
    if kind == b"+":
        return head
    if kind == b"-":
        return ErrorReply(head)
    if kind in (b":", b"("):
        return int(head)
    if kind == b",":
        return float(head)
    if kind == b"#":
        return head == b"t"
    if kind == b"_":
        return None
    raise ValueError(f"not a RESP3 frame type: {kind!r}")


def is_push(frame: Any, kind: bytes, sizes: Sequence[int] = ()) -> bool:
    """True when ``frame`` is a push of ``kind`` (and, if given, one of ``sizes`` long)."""
    return isinstance(frame, Push) and bool(frame) and frame[0] == kind and (not sizes or len(frame) in sizes)
