"""Candidate HTTP servers answering every POST with the same small JSON body.

``--impl httptools``: a bare ``asyncio.Protocol`` (uvloop) feeding httptools' parser, one write
per response; ``--impl uvicorn``: uvicorn (uvloop + httptools, access log off) with a raw ASGI
app; ``--impl aiohttp``: aiohttp's web server with one handler.  Each reads the request body
and ignores it, so what differs is the HTTP machinery alone.

Run: ``python benchmarks/peers/http_fixed.py --impl NAME [--port 0] --ready-file PATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
from pathlib import Path
from typing import Any, cast

BODY = (b'{"model_name":"trading","model_version":"alpha/1","outputs":[{"name":"p_up","shape":[1],'
        b'"datatype":"FP64","data":[0.4293242692947388]}]}')
RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


class HttptoolsProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.done = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.done = 0
        try:
            self.parser.feed_data(data)
        except Exception:  # a malformed request: drop the connection
            if self.transport is not None:
                self.transport.close()
            return
        if self.done and self.transport is not None:
            self.transport.write(RESPONSE * self.done)

    def on_message_complete(self) -> None:
        self.done += 1


async def raw_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        msg = await receive()
        more = msg.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})


def listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def write_ready(path: str | None, sock: socket.socket) -> None:
    if path:
        host, port = sock.getsockname()[:2]
        Path(path + ".tmp").write_text(f"{host}:{port}\n")
        os.replace(path + ".tmp", path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--impl", choices=["httptools", "uvicorn", "aiohttp"], required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ready-file", default=None)
    args = ap.parse_args()
    sock = listening_socket(args.host, args.port)
    if args.impl == "uvicorn":
        import uvicorn

        write_ready(args.ready_file, sock)
        config = uvicorn.Config(raw_asgi, loop="uvloop", http="httptools", log_level="warning",
                                access_log=False)
        uvicorn.Server(config).run(sockets=[sock])
        return
    import uvloop

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        if args.impl == "httptools":
            server = await loop.create_server(HttptoolsProtocol, sock=sock)
            write_ready(args.ready_file, sock)
            async with server:
                await server.serve_forever()
        else:
            from aiohttp import web

            async def handle(request: web.Request) -> web.Response:
                await request.read()
                return web.Response(body=BODY, content_type="application/json")

            app = web.Application()
            app.router.add_post("/{tail:.*}", handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.SockSite(runner, sock).start()
            write_ready(args.ready_file, sock)
            await asyncio.Event().wait()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
