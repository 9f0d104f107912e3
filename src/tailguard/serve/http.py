"""HTTP/1.1 serving the Open Inference Protocol v2 REST API: one ``HttpConnection`` per client.

Requests are parsed by ``httptools.HttpRequestParser`` inside the asyncio protocol (no
framework, no task per request): each request becomes an ``Exchange`` — the dispatcher's
reply sink — appended to the connection's ordered queue when its headers are complete.
Replies may complete out of order (batching, priorities); ``_pump`` writes the contiguous
finished head of the queue in one call, so pipelined responses leave in request order.

Faults stay local, as on the binary protocol: a malformed request gets 400 and the
connection closes after the responses already owed; a body over ``max_frame`` gets 413 and
the connection closes (the stream cannot be resynchronised); a bad infer body gets a 4xx
naming the field and the connection goes on; a client that vanishes marks its exchanges
closed (the dispatcher drops their queued work as abandoned); a client that stops reading
stops only its own reads; a connection that completes no request within
``handshake_timeout_s`` while the server owes it nothing is closed (408 if mid-request).
While the app drains, every response carries ``connection: close``.

Owner: the event loop thread.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

import httptools

from tailguard.schema.wire import Reply, Status
from tailguard.serve.app import adopt_transport
from tailguard.serve.endpoints import endpoints_of
from tailguard.serve.exchange import Exchange
from tailguard.serve.oip import Call, error_body

if TYPE_CHECKING:
    from tailguard.serve.app import App

__all__ = ["MAX_HEADER_BYTES", "MAX_PIPELINE", "MAX_URL", "HttpConnection"]

#: Unanswered requests a connection may hold before it stops reading (pipelining bound).
MAX_PIPELINE = 256
#: Longest request target, and most header bytes in one request (beyond: 414 / 431, close).
MAX_URL = 8192
MAX_HEADER_BYTES = 65536
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_WANTED = frozenset((b"content-length", b"expect", b"content-encoding", b"inference-header-content-length",
                     b"x-client-id", b"traceparent"))


class _Stop(Exception):
    """Raised inside a parser callback to stop parsing this connection's stream."""


class HttpConnection(asyncio.Protocol):
    """One client connection speaking HTTP/1.1 (see docs/http.md)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.dispatcher = app.dispatcher
        self.endpoints = endpoints_of(app)
        self._now = app.clock.now_ns
        self._parser = httptools.HttpRequestParser(self)
        self._max_body = app.config.max_frame
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._pending: deque[Exchange] = deque()
        self._current: Exchange | None = None  # headers complete, body still arriving
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._header_bytes = 0
        self._arrival_ns = 0
        self._next_id = 0
        self._stopped = False  # read no more requests; close once every owed response is out
        self._draining = False
        self._in_message = False
        self._completed = 0
        self._seen = 0
        self._timer: asyncio.TimerHandle | None = None
        self._write_paused = False
        self._read_paused = False

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = adopt_transport(transport)
        self.app.connections.add(self)
        self._draining = self.app.draining
        self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._mark_closed()
        self.app.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def pause_writing(self) -> None:
        # The client is not reading its responses: stop reading its requests (its problem only).
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        self._arrival_ns = self._now()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Stop):
                self._fail_current(500, Status.INTERNAL.code, f"internal error: {exc.__context__!r}")
        except httptools.HttpParserUpgrade:
            self._stopped = True  # no protocol switch: answer what was asked, then close
        except httptools.HttpParserError as exc:
            self.dispatcher.count_error(Status.MALFORMED)
            self._fail_current(400, Status.MALFORMED.code, f"malformed HTTP request: {exc}")
        d = self.dispatcher
        b0 = d.batch_ns
        d.flush()
        self.pump()
        # This read's cost outside batches is load the scheduler accounts for (see tcp.py).
        d.note_ingress(0, self._now() - self._arrival_ns - (d.batch_ns - b0))

    # -- httptools callbacks (inside feed_data) -----------------------------------------------
    def on_message_begin(self) -> None:
        """A request starts: reset the per-request state."""
        self._in_message = True
        self._url = b""
        self._headers = {}
        self._body = []
        self._size = 0
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        """A piece of the request target (may come in several pieces)."""
        self._url += url
        if len(self._url) > MAX_URL:
            self._refuse(414, "uri_too_long", f"request target over {MAX_URL} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        """One complete header; only the few the endpoints read are kept."""
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refuse(431, "headers_too_large", f"request headers over {MAX_HEADER_BYTES} bytes")
        name = name.lower()
        if name in _WANTED:
            self._headers[name] = value

    def on_headers_complete(self) -> None:
        """Queue the request's exchange (its place in the response order); check limits."""
        ex = Exchange(self, self._parser.get_method() == b"HEAD")
        self._pending.append(ex)
        self._current = ex
        if len(self._pending) >= MAX_PIPELINE:
            self._update_reading()
        length = self._headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self._max_body:
            self._too_large()
        if self._headers.get(b"expect", b"").lower() == b"100-continue":
            ex.expect_continue = True

    def on_body(self, body: bytes) -> None:
        """A piece of the body (decoded from chunked transfer coding if need be)."""
        self._size += len(body)
        if self._size > self._max_body:
            self._too_large()
        self._body.append(body)

    def on_message_complete(self) -> None:
        """The request is complete: answer or submit it."""
        ex = self._current
        self._current = None
        self._in_message = False
        self._completed += 1
        if ex is None:
            return
        ex.keep_alive = self._parser.should_keep_alive()
        ex.expect_continue = False
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._next_id += 1
        try:
            self.endpoints.handle(ex, self._parser.get_method(), self._url, body, self._headers,
                                  self._next_id, self._arrival_ns)
        except Exception as exc:  # a bug must cost one request, never the connection
            ex.answer(500, error_body(Status.INTERNAL.code, f"internal error: {exc!r}"))
        if not ex.keep_alive:
            self._stopped = True
            raise _Stop  # requests pipelined after "Connection: close" are not read

    # -- replies -------------------------------------------------------------------------------
    def answer_reply(self, ex: Exchange, reply: Reply, call: Call) -> None:
        """Turn a dispatcher reply into ``ex``'s response (``Exchange.deliver`` calls it)."""
        self.endpoints.answer_reply(ex, reply, call)

    def pump(self) -> None:
        """Write the finished exchanges at the head of the queue, in request order."""
        pending = self._pending
        out: list[bytes] = []
        close = False
        while pending:
            ex = pending[0]
            if ex.code == 0:
                if ex.expect_continue:  # the head request waits for our go-ahead to send its body
                    ex.expect_continue = False
                    out.append(_CONTINUE)
                break
            pending.popleft()
            close = not ex.keep_alive or self._draining
            out.append(ex.render(close))
            if close:
                break
        if out and self.transport is not None and not self.closed:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
        if close or (self._stopped and not pending):
            self._close()
        elif self._read_paused:
            self._update_reading()

    def notice(self, state: str) -> None:
        """Server news from the app: ``"draining"`` makes every later response close."""
        if state == "draining":
            self._draining = True

    # -- faults and flow control ---------------------------------------------------------------
    def _too_large(self) -> None:
        self.dispatcher.count_error(Status.FRAME_TOO_LARGE)
        self._refuse(413, Status.FRAME_TOO_LARGE.code, f"request body over {self._max_body} bytes")

    def _refuse(self, code: int, error_code: str, message: str) -> None:
        """Inside a parser callback: answer the request being parsed, stop reading."""
        self._fail_current(code, error_code, message)
        raise _Stop

    def _fail_current(self, code: int, error_code: str, message: str) -> None:
        """Answer the request being parsed with an error, then read no more."""
        ex = self._current
        if ex is None:
            ex = Exchange(self, False)
            self._pending.append(ex)
        self._current = None
        ex.keep_alive = False
        ex.expect_continue = False
        ex.answer(code, error_body(error_code, message))
        self._stopped = True

    def _update_reading(self) -> None:
        t = self.transport
        if t is None or self.closed:
            return
        want = self._write_paused or len(self._pending) >= MAX_PIPELINE
        if want != self._read_paused:
            self._read_paused = want
            if want:
                t.pause_reading()
            else:
                t.resume_reading()

    def _arm_timer(self) -> None:
        self._seen = self._completed
        self._timer = self.app.loop.call_later(self.app.config.handshake_timeout_s, self._timer_fired)

    def _timer_fired(self) -> None:
        # Lazily re-armed: costs nothing per request.  The server owing a response, or a
        # request completed since the last check, is progress; otherwise the client is idle.
        self._timer = None
        if self.closed:
            return
        pending = self._pending
        if self._completed != self._seen or (pending and pending[0] is not self._current):
            self._arm_timer()
        elif self._in_message:
            self._fail_current(408, "request_timeout", "request not completed in time")
            self.pump()
        else:
            self._close()

    def _mark_closed(self) -> None:
        self.closed = True
        for ex in self._pending:
            ex.closed = True
        self._pending.clear()
        self._current = None

    def _close(self) -> None:
        if not self.closed:
            self._mark_closed()
            if self.transport is not None:
                self.transport.close()

