"""The floor: a length-prefixed frame echo server, asyncio (uvloop) or busy-polling.

Every complete frame (4-byte big-endian length + payload) that arrives is written back as is,
in one write per read.  Nothing else happens, so a round trip through it is the least any
Python server on asyncio can cost: the latency floor tailguard's TCP figures are judged
against.  ``--busy-poll``: one connection at a time, served by spinning on a non-blocking
socket (``recv`` retried until data comes) instead of sleeping in epoll; idle between
connections (blocked in ``accept``).

Run: ``python benchmarks/peers/echo.py [--busy-poll] [--port 0] --ready-file PATH`` (the file
receives ``HOST:PORT`` once listening).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import struct
from pathlib import Path
from typing import cast

_LEN = struct.Struct(">I")


def split_frames(buf: bytearray) -> int:
    """Bytes at the front of ``buf`` that form complete frames."""
    pos, end = 0, len(buf)
    while end - pos >= 4:
        (n,) = _LEN.unpack_from(buf, pos)
        if end - pos - 4 < n:
            break
        pos += 4 + n
    return pos


class EchoProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        n = split_frames(buf)
        if n and self.transport is not None:
            self.transport.write(bytes(buf[:n]))
            del buf[:n]


def write_ready(path: str | None, sock: socket.socket) -> None:
    host, port = sock.getsockname()[:2]
    if path:
        tmp = Path(path + ".tmp")
        tmp.write_text(f"{host}:{port}\n")
        os.replace(tmp, path)


async def serve_asyncio(host: str, port: int, ready_file: str | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoProtocol, host, port)
    write_ready(ready_file, server.sockets[0])
    async with server:
        await server.serve_forever()


def serve_busy_poll(host: str, port: int, ready_file: str | None) -> None:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, port))
    lsock.listen(16)
    write_ready(ready_file, lsock)
    rbuf = bytearray(1 << 16)
    while True:
        conn, _ = lsock.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.setblocking(False)
        buf = bytearray()
        while True:
            try:
                n = conn.recv_into(rbuf)
            except BlockingIOError:
                continue  # spin: never sleep while a client is connected
            except OSError:
                break
            if n == 0:
                break
            buf += memoryview(rbuf)[:n]
            k = split_frames(buf)
            if k:
                conn.sendall(bytes(buf[:k]))
                del buf[:k]
        conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ready-file", default=None)
    ap.add_argument("--busy-poll", action="store_true")
    args = ap.parse_args()
    if args.busy_poll:
        serve_busy_poll(args.host, args.port, args.ready_file)
        return
    try:
        import uvloop

        uvloop.run(serve_asyncio(args.host, args.port, args.ready_file))
    except ImportError:
        asyncio.run(serve_asyncio(args.host, args.port, args.ready_file))


if __name__ == "__main__":
    main()
