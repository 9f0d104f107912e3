"""Minimal servers for the load generator's end-to-end tests, each on its own thread and loop:
``StubWire`` answers the binary protocol (``bulk`` requests are refused with queue_full),
``StubHttp`` answers OIP infer posts (``bulk`` with 503 and a tailguard code)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

import msgspec

from tailguard.schema.frames import FrameReader, encode_frame, server_decoder
from tailguard.schema.wire import Hello, Reply, Request, Status, Welcome


class _Thread:
    def __init__(self, factory: Callable[[], asyncio.Protocol]) -> None:
        self.loop = asyncio.new_event_loop()
        self.server: Any = None
        self.address = ""
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(self.loop.create_server(factory, "127.0.0.1", 0))
            host, port = self.server.sockets[0].getsockname()[:2]
            self.address = f"{host}:{port}"
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        ready.wait(10)

    def close(self) -> None:
        def stop() -> None:
            self.server.close()
            self.loop.stop()

        self.loop.call_soon_threadsafe(stop)
        self.thread.join(10)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _WireProto(asyncio.Protocol):
    def __init__(self, seen: list[Request]) -> None:
        self.reader = FrameReader()
        self.dec = server_decoder()
        self.enc = msgspec.msgpack.Encoder()
        self.seen = seen
        self.t: Any = None

    def connection_made(self, transport: Any) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        out = []
        for payload in self.reader.feed(data):
            msg = self.dec.decode(payload)
            if isinstance(msg, Hello):
                out.append(encode_frame(self.enc, Welcome(1, "stub", "svc", 1 << 20, 0, ["item"],
                                                          ["price"], ["p"], ["primary"],
                                                          ["critical", "normal", "bulk"], "1")))
            elif isinstance(msg, Request):
                self.seen.append(msg)
                status = Status.QUEUE_FULL if msg.priority == "bulk" else Status.OK
                out.append(encode_frame(self.enc, Reply(msg.id, status, [0.5], 1,
                                                        timings_ns=[1, 2, 3, 4, 5, 12_000])))
        self.t.write(b"".join(out))


class StubWire(_Thread):
    def __init__(self) -> None:
        self.seen: list[Request] = []
        super().__init__(lambda: _WireProto(self.seen))


class _HttpProto(asyncio.Protocol):
    def __init__(self, seen: list[dict[str, Any]]) -> None:
        self.buf = b""
        self.seen = seen
        self.t: Any = None

    def connection_made(self, transport: Any) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, rest = self.buf.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            n = int(next(h.split(b":")[1] for h in lines if h.lower().startswith(b"content-length")))
            if len(rest) < n:
                return
            body, self.buf = json.loads(rest[:n]), rest[n:]
            self.seen.append({"path": head.split(b" ")[1].decode(), "body": body})
            if body.get("parameters", {}).get("priority") == "bulk":
                status, out = "503 Service Unavailable", b'{"error":"full","code":"queue_full"}'
            else:
                status, out = "200 OK", b'{"outputs":[{"name":"p","datatype":"FP64","data":[0.5]}]}'
            # Sent in two pieces to exercise the client's incremental parser.
            resp = f"HTTP/1.1 {status}\r\nContent-Length: {len(out)}\r\n\r\n"
            self.t.write(resp.encode() + out[:5])
            self.t.write(out[5:])


class StubHttp(_Thread):
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        super().__init__(lambda: _HttpProto(self.seen))
