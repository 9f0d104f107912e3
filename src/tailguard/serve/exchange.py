"""One HTTP request/response pair on a connection: the dispatcher's reply sink for HTTP.

An ``Exchange`` is created when a request's headers are complete and queued on its
connection in request order.  It holds the response until every earlier exchange on the
connection has been written (pipelining: responses leave in request order even when
replies complete out of order); its connection renders it then, adding
``connection: close`` when the connection ends after it.

Owner: the event loop thread.
"""

from __future__ import annotations

import math
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Protocol

from tailguard.schema.wire import Reply
from tailguard.serve.oip import Call

__all__ = ["JSON", "Exchange", "ExchangeOwner", "retry_headers"]

JSON = b"application/json"
_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_NO_CALL = Call("", False, ())


class ExchangeOwner(Protocol):
    """The connection an exchange belongs to (``HttpConnection``)."""

    def answer_reply(self, ex: Exchange, reply: Reply, call: Call) -> None:
        """Turn the dispatcher's reply into ``ex``'s response."""
        ...

    def pump(self) -> None:
        """Write the finished exchanges at the head of the queue."""
        ...


class _DateLine:
    """The ``date`` header, formatted at most once a second (RFC 9110 asks origin servers
    with a clock to send it)."""

    def __init__(self) -> None:
        self.second = -1
        self.line = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.line = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self.line


_date = _DateLine()


def retry_headers(retry_after_us: int) -> bytes:
    """``retry-after`` (whole seconds, rounded up, as RFC 9110 requires) and the precise
    ``retry-after-ms`` (milliseconds with µs decimals) for a retryable refusal."""
    us = max(retry_after_us, 0)
    return b"retry-after: %d\r\nretry-after-ms: %d.%03d\r\n" % (math.ceil(us / 1e6), us // 1000, us % 1000)


class Exchange:
    """One request's place in its connection's response order; a ``ReplySink``.

    ``code`` is 0 until the response is known.  ``closed`` turns true when the client
    vanished (the dispatcher then drops the work).  ``head``: a HEAD request (no body is
    written).  ``expect_continue``: the client waits for ``100 Continue`` before its body.
    """

    __slots__ = ("body", "call", "closed", "code", "content_type", "expect_continue", "extra", "head",
                 "keep_alive", "owner")

    def __init__(self, owner: ExchangeOwner, head: bool) -> None:
        self.owner = owner
        self.head = head
        self.closed = False
        self.keep_alive = True
        self.expect_continue = False
        self.call = _NO_CALL
        self.code = 0
        self.body = b""
        self.content_type = JSON
        self.extra = b""

    def answer(self, code: int, body: bytes, extra: bytes = b"", content_type: bytes = JSON) -> None:
        """Set the response (status ``code``, ``body``; ``extra``: more header lines, each
        ending in CRLF).  The first answer wins."""
        if self.code == 0:
            self.code = code
            self.body = body
            self.extra = extra
            self.content_type = content_type

    def render(self, close: bool) -> bytes:
        """The response bytes; ``close`` adds ``connection: close``."""
        body = self.body
        head = b"%scontent-type: %s\r\ncontent-length: %d\r\n%s%s%s\r\n" % (
            _LINES.get(self.code) or b"HTTP/1.1 %d Unknown\r\n" % self.code, self.content_type, len(body),
            self.extra, _date.get(), b"connection: close\r\n" if close else b"",
        )
        return head if self.head else head + body

    # -- ReplySink -----------------------------------------------------------------------------
    def deliver(self, reply: Reply) -> None:
        """Take the dispatcher's reply (written by ``flush``, in request order)."""
        if self.closed or self.code:
            return
        try:
            self.owner.answer_reply(self, reply, self.call)
        except Exception as exc:  # a bug must cost one request, never the connection
            self.answer(500, b'{"error":"internal error: %s","code":"internal","field":""}'
                        % type(exc).__name__.encode())

    def flush(self) -> None:
        """Write what is ready on the connection."""
        if not self.closed:
            self.owner.pump()
