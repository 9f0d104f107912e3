"""A private ``redis-server`` for a benchmark, and raw-socket floors to compare Redis reads with.

The server is ``tailguard.features.online.server.LocalRedis`` (the one start discipline the
tests' ``RedisServer`` follows too), found on PATH.  ``RawPing`` is one PING round trip with
nothing else in it; ``RawPipeline`` sends a prepared pipelined batch and reads its reply
without parsing it: the floor of an N-key read (the network and Redis' own work).
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Sequence
from pathlib import Path

from tailguard.features.online.server import LocalRedis, free_port

__all__ = ["RawPing", "RawPipeline", "RedisServer", "free_port"]


class RedisServer(LocalRedis):
    """``LocalRedis`` with the binary found on PATH (exit with a hint when there is none)."""

    def __init__(self, workdir: Path, binary: str | None = None) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise SystemExit("redis-server not found on PATH (install it, e.g. apt-get install redis-server)")
        super().__init__(found, workdir)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class RawPing:
    """``PING`` over one raw TCP connection (TCP_NODELAY): the round trip with nothing else in it."""

    def __init__(self, port: int) -> None:
        self.sock = _connect(port)

    def __call__(self) -> None:
        """One PING and its ``+PONG`` reply."""
        self.sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        got = self.sock.recv(64)
        while not got.endswith(b"\r\n"):
            got += self.sock.recv(64)

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()


class RawPipeline:
    """Prepared batches sent in turn on one raw connection, each reply read as bytes (``reply_bytes``
    long, known in advance), not parsed: the floor of a pipelined read of that many keys."""

    def __init__(self, port: int, payloads: Sequence[bytes], reply_bytes: int) -> None:
        self.sock = _connect(port)
        self.payloads = list(payloads)
        self.reply_bytes = reply_bytes
        self.pos = 0
        self._view = memoryview(bytearray(1 << 20))

    def __call__(self) -> None:
        """Send the next batch, receive its whole reply."""
        self.sock.sendall(self.payloads[self.pos])
        self.pos = (self.pos + 1) % len(self.payloads)
        got = 0
        while got < self.reply_bytes:
            got += self.sock.recv_into(self._view)

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()
