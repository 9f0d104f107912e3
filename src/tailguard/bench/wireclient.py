"""The load generator's side of the binary protocol: pre-encoded requests, pipelined connections.

A request is encoded once per (class, key, context) into a ``FrameTemplate``: the frame with
its ``id`` field widened to a fixed 4-byte msgpack uint32, so sending request ``n`` is two
byte concatenations instead of an encode.  ``WireChannel`` is an asyncio protocol for one
connection: it does the Hello/Welcome handshake, buffers frames until ``flush`` (one write
for a burst), keeps the in-flight requests by id and hands every reply to its sink.  With
``echo=True`` it speaks to a plain frame echo server instead (every frame back is the answer
to the oldest request: the floor measurement).  Owned by the loop that runs it.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import msgspec

from tailguard.bench.recorder import CONNECTION_LOST
from tailguard.schema.frames import FrameReader, client_decoder, encode_frame
from tailguard.schema.wire import MAGIC, PROTOCOL_VERSIONS, Hello, Refused, Reply, Request, Welcome

__all__ = ["FrameTemplate", "HandshakeError", "ReplySink", "ServerTimeSink", "WireChannel", "open_wire",
           "request_templates", "split_address"]

_LEN = struct.Struct(">I")
_UINT32 = b"\xce"

#: ``sink(channel, cls, status, intended_ns, sent_ns, done_ns)``: called once per request.
ReplySink = Callable[[Any, int, int, int, int, int], None]
#: ``server_time(cls, intended_ns, server_ns)``: the server's own time for a reply (its last
#: ``timings_ns`` entry: frame arrival to reply handed to the socket), when it sends one.
ServerTimeSink = Callable[[int, int, int], None]


class HandshakeError(ConnectionError):
    """The server refused the Hello, or answered it with something other than Welcome."""


class FrameTemplate:
    """One pre-encoded request frame with a 4-byte id slot: ``frame(id)`` is the whole frame."""

    __slots__ = ("head", "tail")

    def __init__(self, encoder: msgspec.msgpack.Encoder, request: Request) -> None:
        a = encoder.encode(msgspec.structs.replace(request, id=0))
        b = encoder.encode(msgspec.structs.replace(request, id=1))
        diff = [i for i in range(min(len(a), len(b))) if a[i] != b[i]]
        if len(a) != len(b) or len(diff) != 1 or a[diff[0]] != 0:
            raise ValueError("cannot find the id field in the encoded request")
        p = diff[0]
        payload_len = len(a) + 4  # id 0 (1 byte) becomes 0xce + 4 bytes
        self.head = _LEN.pack(payload_len) + a[:p] + _UINT32
        self.tail = a[p + 1:]

    def frame(self, rid: int) -> bytes:
        """The complete frame (length prefix included) for request id ``rid`` (< 2**32)."""
        return self.head + rid.to_bytes(4, "big") + self.tail


def request_templates(classes: Sequence[str], keys: Sequence[Any], contexts: Sequence[dict[str, Any] | None],
                      *, budgets_us: Sequence[int] | None = None, client_id: str = "",
                      limit: int = 256) -> list[list[FrameTemplate]]:
    """For every class, templates over (key, context) pairs: ``keys[i % len]`` with
    ``contexts[i % len]`` for ``i < max(len(keys), len(contexts))``, at most ``limit``."""
    enc = msgspec.msgpack.Encoder()
    n = min(max(len(keys), len(contexts)), limit)
    out: list[list[FrameTemplate]] = []
    for ci, cls in enumerate(classes):
        budget = budgets_us[ci] if budgets_us else 0
        out.append([FrameTemplate(enc, Request(0, keys[i % len(keys)], contexts[i % len(contexts)], cls,
                                               budget, client_id)) for i in range(n)])
    return out


class WireChannel(asyncio.Protocol):
    """One pipelined connection speaking the binary protocol (or a frame echo)."""

    def __init__(self, templates: list[list[FrameTemplate]], sink: ReplySink, clock: Callable[[], int], *,
                 echo: bool = False, client_id: str = "", capacity: int = 1 << 30,
                 server_time: ServerTimeSink | None = None) -> None:
        self.templates = templates
        self.server_time = server_time
        self.sink = sink
        self.clock = clock
        self.echo = echo
        self.capacity = capacity
        self.client_id = client_id
        self.alive = False
        self.welcome: Welcome | None = None
        self.transport: asyncio.Transport | None = None
        self._reader = FrameReader()
        self._decode = client_decoder().decode
        self._inflight: dict[int, tuple[int, int, int]] = {}
        self._fifo: deque[tuple[int, int, int]] = deque()
        self._out: list[bytes] = []
        self._next_id = 0
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def inflight(self) -> int:
        """Requests sent (or buffered) and not yet answered on this connection."""
        return len(self._fifo) if self.echo else len(self._inflight)

    async def ready(self) -> None:
        """Wait for the Welcome (immediately ready in echo mode)."""
        await self._ready

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        if self.echo:
            self.alive = True
            self._ready.set_result(None)
            return
        hello = Hello(MAGIC, list(PROTOCOL_VERSIONS), self.client_id)
        self.transport.write(encode_frame(msgspec.msgpack.Encoder(), hello))

    def submit(self, cls: int, tpl: int, intended_ns: int, sent_ns: int) -> None:
        """Buffer request ``templates[cls][tpl]``; it goes out at the next ``flush``."""
        if self.echo:
            self._fifo.append((cls, intended_ns, sent_ns))
            self._out.append(self.templates[cls][tpl].frame(0))
            return
        rid = self._next_id
        self._next_id = (rid + 1) & 0xFFFFFFFF
        self._inflight[rid] = (cls, intended_ns, sent_ns)
        self._out.append(self.templates[cls][tpl].frame(rid))

    def flush(self) -> None:
        """Write what ``submit`` buffered (one call for a burst)."""
        out = self._out
        if out and self.transport is not None:
            if len(out) == 1:
                self.transport.write(out[0])
            else:
                self.transport.writelines(out)
            self._out = []

    def data_received(self, data: bytes) -> None:
        now = self.clock()
        frames = self._reader.feed(data)
        if self.echo:
            for _ in frames:
                if not self._fifo:
                    return  # answers to abandoned requests
                cls, intended, sent = self._fifo.popleft()
                self.sink(self, cls, 0, intended, sent, now)
            return
        for payload in frames:
            msg = self._decode(payload)
            if type(msg) is Reply:
                entry = self._inflight.pop(msg.id, None)
                if entry is not None:
                    self.sink(self, entry[0], msg.status, entry[1], entry[2], now)
                    if self.server_time is not None and msg.timings_ns:
                        self.server_time(entry[0], entry[1], msg.timings_ns[-1])
            elif type(msg) is Welcome:
                self.welcome = msg
                self.alive = True
                if not self._ready.done():
                    self._ready.set_result(None)
            elif type(msg) is Refused and not self._ready.done():
                self._ready.set_exception(HandshakeError(f"refused ({msg.status}): {msg.error}"))
            # Pong and Notice need no action from a load generator.

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        now = self.clock()
        if not self._ready.done():
            self._ready.set_exception(HandshakeError(f"connection closed during the handshake: {exc}"))
        lost = list(self._fifo) if self.echo else list(self._inflight.values())
        self._fifo.clear()
        self._inflight.clear()
        for cls, intended, sent in lost:
            self.sink(self, cls, CONNECTION_LOST, intended, sent, now)
        if not self.closed.done():
            self.closed.set_result(None)

    def abandon(self) -> list[tuple[int, int, int]]:
        """Forget the requests in flight (the run gave up waiting); returns (cls, intended, sent)."""
        lost = list(self._fifo) if self.echo else list(self._inflight.values())
        self._fifo.clear()
        self._inflight.clear()
        return lost

    def close(self) -> None:
        """Close the connection (in-flight requests are reported as lost)."""
        if self.transport is not None:
            self.transport.close()


async def open_wire(address: str, templates: list[list[FrameTemplate]], sink: ReplySink,
                    clock: Callable[[], int], *, echo: bool = False, client_id: str = "",
                    timeout_s: float = 10.0, server_time: ServerTimeSink | None = None) -> WireChannel:
    """Connect to ``HOST:PORT`` (or ``unix:PATH``) and complete the handshake."""
    loop = asyncio.get_running_loop()

    def factory() -> WireChannel:
        return WireChannel(templates, sink, clock, echo=echo, client_id=client_id, server_time=server_time)

    if address.startswith("unix:"):
        _, ch = await asyncio.wait_for(loop.create_unix_connection(factory, address[5:]), timeout_s)
    else:
        host, port = split_address(address)
        _, ch = await asyncio.wait_for(loop.create_connection(factory, host, port), timeout_s)
    await asyncio.wait_for(ch.ready(), timeout_s)
    return ch


def split_address(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[v6]:PORT"``) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"bad address {address!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)
