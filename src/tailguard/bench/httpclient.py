"""The load generator's HTTP side: raw HTTP/1.1 keep-alive over asyncio, requests pre-built.

Every request is built once as complete bytes (request line, headers, JSON body), so sending
one is a buffer append.  ``HttpChannel`` is one keep-alive connection; with ``capacity`` 1
(the default) it has one request in flight, more pipelines them (HTTP/1.1 answers in order, so
in-flight requests are a FIFO).  The response parser reads the status line and
``Content-Length`` only: enough for the servers measured here, far cheaper than a general
client.  A non-200 answer's JSON body is searched for a tailguard status code (``"code"``:
``"queue_full"``...); without one the status is ``HTTP_BASE + http status``.  Owned by the
loop that runs it.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from tailguard.bench.recorder import CONNECTION_LOST, HTTP_BASE
from tailguard.bench.wireclient import ReplySink, split_address
from tailguard.schema.wire import Status

__all__ = ["HttpChannel", "HttpProtocolError", "build_request", "oip_infer_body", "open_http",
           "status_from_body"]

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r]*chunked", re.IGNORECASE)


class HttpProtocolError(Exception):
    """The server's answer could not be parsed (e.g. chunked encoding, which is not read here)."""


def _datatype(values: list[Any]) -> str:
    if all(isinstance(v, str) for v in values):
        return "BYTES"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "INT64"
    return "FP64"


def oip_infer_body(entity: str, key: Any, context: dict[str, Any] | None, *, priority: str = "",
                   timeout_us: int = 0) -> bytes:
    """An Open Inference Protocol v2 ``infer`` body for one row: the entity key as input
    ``entity``, each context field as an input of its own; the class and budget as parameters."""
    inputs = [{"name": entity, "shape": [1], "datatype": _datatype([key]), "data": [key]}]
    for name, value in (context or {}).items():
        inputs.append({"name": name, "shape": [1], "datatype": _datatype([value]), "data": [value]})
    body: dict[str, Any] = {"inputs": inputs}
    params: dict[str, Any] = {}
    if priority:
        params["priority"] = priority
    if timeout_us:
        params["timeout"] = timeout_us
    if params:
        body["parameters"] = params
    return json.dumps(body, separators=(",", ":")).encode()


def build_request(host: str, path: str, body: bytes, *, method: str = "POST") -> bytes:
    """A complete keep-alive HTTP/1.1 request with a JSON body."""
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def status_from_body(http_status: int, body: bytes) -> int:
    """The tailguard status code carried by an error answer's JSON, else ``HTTP_BASE + status``."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        for field in ("code", "status"):
            v = doc.get(field)
            if isinstance(v, str) and v.upper() in Status.__members__:
                return int(Status[v.upper()])
            if isinstance(v, int) and not isinstance(v, bool) and v in Status._value2member_map_:
                return v
    return HTTP_BASE + http_status


class HttpChannel(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with up to ``capacity`` requests in flight."""

    def __init__(self, requests: list[list[bytes]], sink: ReplySink, clock: Callable[[], int], *,
                 capacity: int = 1) -> None:
        self.requests = requests
        self.sink = sink
        self.clock = clock
        self.capacity = capacity
        self.alive = False
        self.transport: asyncio.Transport | None = None
        self._fifo: deque[tuple[int, int, int]] = deque()
        self._out: list[bytes] = []
        self._buf = bytearray()
        self._need = -1  # body bytes still expected (-1: reading a head)
        self._status = 0
        self.protocol_error: HttpProtocolError | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def inflight(self) -> int:
        """Requests sent (or buffered) and not yet answered on this connection."""
        return len(self._fifo)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.alive = True

    def submit(self, cls: int, tpl: int, intended_ns: int, sent_ns: int) -> None:
        """Buffer request ``requests[cls][tpl]``; it goes out at the next ``flush``."""
        self._fifo.append((cls, intended_ns, sent_ns))
        self._out.append(self.requests[cls][tpl])

    def flush(self) -> None:
        """Write what ``submit`` buffered."""
        out = self._out
        if out and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
            self._out = []

    def data_received(self, data: bytes) -> None:
        now = self.clock()
        buf = self._buf
        buf += data
        while True:
            if self._need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[: end + 2])
                del buf[: end + 4]
                if _CHUNKED.search(head):
                    self._fail("chunked responses are not supported by this client")
                    return
                m = _CONTENT_LENGTH.search(head)
                self._status = int(head[9:12])
                self._need = int(m.group(1)) if m else 0
            if len(buf) < self._need:
                return
            body = bytes(buf[: self._need])
            del buf[: self._need]
            self._need = -1
            if not self._fifo:
                self._fail("an answer arrived with no request in flight")
                return
            cls, intended, sent = self._fifo.popleft()
            status = 0 if self._status == 200 else status_from_body(self._status, body)
            self.sink(self, cls, status, intended, sent, now)

    def _fail(self, why: str) -> None:
        self.protocol_error = HttpProtocolError(why)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        now = self.clock()
        lost = list(self._fifo)
        self._fifo.clear()
        for cls, intended, sent in lost:
            self.sink(self, cls, CONNECTION_LOST, intended, sent, now)
        if not self.closed.done():
            self.closed.set_result(None)

    def abandon(self) -> list[tuple[int, int, int]]:
        """Forget the requests in flight (the run gave up waiting); returns (cls, intended, sent)."""
        lost = list(self._fifo)
        self._fifo.clear()
        return lost

    def close(self) -> None:
        """Close the connection (in-flight requests are reported as lost)."""
        if self.transport is not None:
            self.transport.close()


async def open_http(address: str, requests: list[list[bytes]], sink: ReplySink, clock: Callable[[], int],
                    *, capacity: int = 1, timeout_s: float = 10.0) -> HttpChannel:
    """Open one keep-alive connection to ``HOST:PORT``."""
    host, port = split_address(address)
    loop = asyncio.get_running_loop()
    _, ch = await asyncio.wait_for(
        loop.create_connection(lambda: HttpChannel(requests, sink, clock, capacity=capacity), host, port),
        timeout_s)
    return ch
