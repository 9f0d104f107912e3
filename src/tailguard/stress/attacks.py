"""Abusive clients for the ``disconnect-storm`` and ``oversized-requests`` scenarios.

``DisconnectStorm`` opens connections at ``rate_hz`` and drops each abruptly (``SO_LINGER``
0: a reset, not a goodbye), cycling through four ways: before saying anything; after
``Hello``; halfway through a request frame; and right after a whole request, before its
reply.  A server must free each connection's resources and keep serving everyone else.

``Oversize`` repeatedly sends what a server must refuse without falling over: a frame whose
header announces more than ``max_frame`` bytes (the server must answer ``frame_too_large``
and close that connection), a batch the client itself refuses to send (over the server's
``max_frame``: ``frame_too_large`` without a byte on the wire) and a batch just under
``max_frame`` (thousands of rows: served, or refused with a stable status).  Every outcome
is counted by its stable code (``codes``); ``connection_lost`` or ``no_reply`` would mean
the server did not answer with a code.

Both run as tasks on the scenario's event loop until ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any

import msgspec

from tailguard.client import AsyncClient, ClientError
from tailguard.schema.frames import client_decoder, encode_frame
from tailguard.schema.wire import MAGIC, PROTOCOL_VERSIONS, Hello, Reply, Request, Status

__all__ = ["DisconnectStorm", "Oversize"]

_ENC = msgspec.msgpack.Encoder()
_LINGER_RST = struct.pack("ii", 1, 0)


def _hello(client_id: str) -> bytes:
    return encode_frame(_ENC, Hello(MAGIC, list(PROTOCOL_VERSIONS), client_id))


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    writer.transport.abort()


async def _read_frame(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    head = await asyncio.wait_for(reader.readexactly(4), timeout_s)
    (n,) = struct.unpack(">I", head)
    return await asyncio.wait_for(reader.readexactly(n), timeout_s)


class DisconnectStorm:
    """Connections dropped abruptly at ``rate_hz`` against ``addresses`` (round-robin)."""

    def __init__(self, addresses: list[str], key: Any, context: dict[str, Any] | None, *,
                 rate_hz: float = 200.0) -> None:
        self.addresses = addresses
        self.rate_hz = rate_hz
        self.connections = 0
        self.connect_failures = 0
        self.by_mode = [0, 0, 0, 0]
        self._hello = _hello("stress-storm")
        self._request = encode_frame(_ENC, Request(1, keys=key, context=context))
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Storm until ``stop``."""
        loop = asyncio.get_running_loop()
        period = 1.0 / self.rate_hz
        i = 0
        next_t = loop.time()
        while not self._stop.is_set():
            task = loop.create_task(self._one(i))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            i += 1
            next_t += period
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, next_t - loop.time()))
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)

    def stop(self) -> None:
        """Stop starting connections."""
        self._stop.set()

    async def _one(self, i: int) -> None:
        mode = i % 4
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(*_split(self.addresses[i % len(self.addresses)])), 1.0)
        except (OSError, TimeoutError):
            self.connect_failures += 1
            return
        self.connections += 1
        self.by_mode[mode] += 1
        try:
            with contextlib.suppress(OSError):  # the server may drop a half-sent connection first
                if mode >= 1:
                    writer.write(self._hello)
                if mode == 2:
                    writer.write(self._request[: len(self._request) // 2])
                elif mode == 3:
                    writer.write(self._request)
                if mode:
                    await writer.drain()
                    await asyncio.sleep(0.001 * (i % 5))
        finally:
            _reset(writer)

    def statistics(self) -> dict[str, Any]:
        """Connections made (by way of dropping) and failed."""
        return {"connections": self.connections, "connect_failures": self.connect_failures,
                "by_mode": {"silent": self.by_mode[0], "after_hello": self.by_mode[1],
                            "mid_frame": self.by_mode[2], "before_reply": self.by_mode[3]}}


class Oversize:
    """Oversized frames and huge batches against ``address`` (see the module docstring)."""

    def __init__(self, address: str, max_frame: int, keys: list[Any], context: dict[str, Any] | None, *,
                 period_s: float = 0.2) -> None:
        self.address = address
        self.max_frame = max_frame
        self.keys = keys
        self.context = context
        self.period_s = period_s
        self.codes: dict[str, dict[str, int]] = {"oversize_frame": {}, "batch_over_limit": {},
                                                 "batch_near_limit": {}}
        self._stop = asyncio.Event()
        self._dec = client_decoder()

    def _count(self, kind: str, code: str) -> None:
        d = self.codes[kind]
        d[code] = d.get(code, 0) + 1

    def stop(self) -> None:
        """Stop after the current round."""
        self._stop.set()

    async def run(self) -> None:
        """Send a round of each kind every ``period_s`` until ``stop``."""
        # Rows per batch: the near-limit batch is ~90 % of max_frame, the other twice max_frame.
        probe = len(_ENC.encode(Request(1, keys=[self.keys[0]] * 100, batch=True, context=self.context)))
        per_row = max(1.0, probe / 100)
        near = max(2, int(self.max_frame * 0.9 / per_row))
        over = max(near + 1, int(self.max_frame * 2 / per_row))
        async with AsyncClient([self.address], timeout_s=10.0, max_retries=0,
                               max_reply_frame=64 * self.max_frame + (1 << 24)) as client:
            while not self._stop.is_set():
                await self._raw_oversize()
                for kind, n in (("batch_over_limit", over), ("batch_near_limit", near)):
                    keys = [self.keys[j % len(self.keys)] for j in range(n)]
                    try:
                        await client.predict_batch(keys, self.context, priority=None, timeout_s=10.0)
                        self._count(kind, "ok")
                    except ClientError as exc:
                        self._count(kind, exc.code)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.period_s)

    async def _raw_oversize(self) -> None:
        kind = "oversize_frame"
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*_split(self.address)), 2.0)
        except (OSError, TimeoutError):
            self._count(kind, "connect_failed")
            return
        try:
            writer.write(_hello("stress-oversize"))
            await _read_frame(reader, 2.0)  # Welcome
            writer.write(struct.pack(">I", self.max_frame + 1) + b"\x00" * 4096)
            await writer.drain()
            msg = self._dec.decode(await _read_frame(reader, 2.0))
            if isinstance(msg, Reply):
                try:
                    self._count(kind, Status(msg.status).code)
                except ValueError:
                    self._count(kind, f"status_{msg.status}")
            else:
                self._count(kind, type(msg).__name__.lower())
            closed = await asyncio.wait_for(reader.read(1), 2.0) == b""
            self._count(kind, "closed_after" if closed else "left_open")
        except (asyncio.IncompleteReadError, ConnectionError):
            self._count(kind, "connection_lost")
        except TimeoutError:
            self._count(kind, "no_reply")
        finally:
            writer.close()

    def statistics(self) -> dict[str, Any]:
        """Outcomes by kind and stable code."""
        return {"max_frame": self.max_frame, "codes": self.codes}
