"""A blocking binary-protocol client for integration tests: no retries, hedging or pooling,
so tests control every byte (malformed frames, half frames, silence)."""

from __future__ import annotations

import socket
import struct
from typing import Any

import msgspec

from tailguard.schema.frames import client_decoder, encode_frame
from tailguard.schema.wire import Hello, Ping, Reply, Request

_LEN = struct.Struct(">I")


class RawClient:
    """A blocking binary-protocol client with no retries, hedging or pooling."""

    def __init__(self, address: str, *, hello: bool = True, timeout_s: float = 10.0) -> None:
        if address.startswith("/"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout_s)
            self.sock.connect(address)
        else:
            host, _, port = address.rpartition(":")
            self.sock = socket.create_connection((host, int(port)), timeout=timeout_s)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.enc = msgspec.msgpack.Encoder()
        self.dec = client_decoder()
        self.welcome: Any = None
        if hello:
            self.send(Hello("tailguard", [1], "test"))
            self.welcome = self.recv()

    def send(self, msg: Any) -> None:
        self.sock.sendall(encode_frame(self.enc, msg))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed by the server")
            buf += chunk
        return bytes(buf)

    def recv(self) -> Any:
        (n,) = _LEN.unpack(self._exact(4))
        return self.dec.decode(self._exact(n))

    def request(self, rid: int, keys: Any, **fields: Any) -> Reply:
        self.send(Request(rid, keys, **fields))
        reply = self.recv()
        assert isinstance(reply, Reply)
        return reply

    def ping(self, pid: int = 1) -> Any:
        self.send(Ping(pid))
        return self.recv()

    def closed_by_server(self) -> bool:
        """True when the server has closed the connection (reads EOF)."""
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True

    def close(self) -> None:
        self.sock.close()


CTX = {"price": 104.5, "size": 3.0}
