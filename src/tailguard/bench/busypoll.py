"""A sequential client that spins on its socket instead of sleeping in epoll (or, with
``spin=False``, a plain blocking one).

A blocking wait for a reply costs a wake-up of the sleeping thread (35-40 µs on the small VMs
measured here), twice per round trip when the server sleeps too.  Here the socket is
non-blocking and ``recv_into`` is retried until the frame is complete, so the client never
sleeps: it pairs with ``tailguard serve --busy-poll`` (and with ``benchmarks/peers/echo.py
--busy-poll`` for the floor).  It burns a core for as long as it runs; sequential mode only.
Owned by the calling thread.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import msgspec
import numpy as np

from tailguard.bench.mix import PriorityMix
from tailguard.bench.recorder import Recorder
from tailguard.bench.wireclient import FrameTemplate, HandshakeError, split_address
from tailguard.schema.frames import FrameReader, client_decoder, encode_frame
from tailguard.schema.wire import MAGIC, PROTOCOL_VERSIONS, Hello, Reply, Welcome

__all__ = ["BusyPollClient"]


class BusyPollClient:
    """One connection; ``roundtrip`` sends a frame and spins until a whole frame comes back."""

    def __init__(self, address: str, *, echo: bool = False, client_id: str = "",
                 clock: Callable[[], int] = time.perf_counter_ns, timeout_s: float = 10.0,
                 spin: bool = True) -> None:
        if address.startswith("unix:"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout_s)
            self.sock.connect(address[5:])
        else:
            self.sock = socket.create_connection(split_address(address), timeout=timeout_s)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # spin=False: a plain blocking client (the thread sleeps in recv), the sequential
        # caller most applications are; same code path otherwise, for like-for-like floors.
        self.sock.setblocking(not spin)
        if not spin:
            self.sock.settimeout(timeout_s)
        self.clock = clock
        self.timeout_ns = int(timeout_s * 1e9)
        self.echo = echo
        self.welcome: Welcome | None = None
        self._reader = FrameReader()
        self._buf = bytearray(1 << 16)
        self._decode = client_decoder().decode
        if not echo:
            hello = encode_frame(msgspec.msgpack.Encoder(), Hello(MAGIC, list(PROTOCOL_VERSIONS), client_id))
            msg = self._decode(self.roundtrip(hello)[1])
            if type(msg) is not Welcome:
                raise HandshakeError(f"expected Welcome, got {msg!r}")
            self.welcome = msg

    def roundtrip(self, frame: bytes) -> tuple[int, bytes]:
        """Send ``frame``; spin until one frame comes back.  Returns (arrival ns, payload)."""
        sock, buf, feed, clock = self.sock, self._buf, self._reader.feed, self.clock
        sock.sendall(frame)
        start = clock()
        while True:
            try:
                n = sock.recv_into(buf)
            except BlockingIOError:
                if clock() - start > self.timeout_ns:
                    raise TimeoutError("no reply within the timeout") from None
                continue
            now = clock()
            if n == 0:
                raise ConnectionError("the server closed the connection")
            frames = feed(memoryview(buf)[:n])
            if frames:
                return now, frames[0]

    def run(self, templates: list[list[FrameTemplate]], mix: PriorityMix, recorder: Recorder, n: int,
            *, warmup: int = 0, seed: int = 0) -> float:
        """``warmup`` then ``n`` recorded round trips; returns the recorded span in seconds."""
        rng = np.random.default_rng(seed)
        total = n + warmup
        classes = mix.draw(rng, total).tolist()
        tpls = rng.integers(0, len(templates[0]), total).tolist()
        recorder.record_from_ns = 1 << 62
        clock, decode, roundtrip = self.clock, self._decode, self.roundtrip
        t_first = clock()
        for i in range(total):
            if i == warmup:
                t_first = recorder.record_from_ns = clock()
            cls = classes[i]
            frame = templates[cls][tpls[i]].frame(i & 0xFFFFFFFF)
            t0 = clock()
            done, payload = roundtrip(frame)
            recorder.on_send(cls, t0, t0)
            status = 0
            if not self.echo:
                msg = decode(payload)
                status = msg.status if type(msg) is Reply else -2
                if type(msg) is Reply and msg.timings_ns:
                    recorder.on_server_time(cls, t0, msg.timings_ns[-1])
            recorder.on_reply(cls, status, t0, t0, done)
        return (clock() - t_first) / 1e9

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()
