"""An App serving HTTP on 127.0.0.1 from an event loop in a background thread (uvloop when
installed, as in ``tailguard serve``): the in-process server of the HTTP and dashboard tests."""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
from pathlib import Path

from tailguard import load_service
from tailguard.serve.app import App, ServeConfig

__all__ = ["InThreadServer"]


class InThreadServer:
    """An App serving HTTP on a free loopback port; ``close`` stops the app and the loop."""

    def __init__(self, service_dir: Path, config: ServeConfig) -> None:
        try:
            import uvloop

            self.loop = uvloop.new_event_loop()
        except ImportError:  # pragma: no cover - the serve extra is installed in CI
            self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        service = load_service(service_dir, freeze_gc=False)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        self.port = sock.getsockname()[1]

        async def start() -> App:
            app = App(service, config, self.loop)
            await app.start([("http", sock)])
            return app

        self.app = asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)

    def client(self) -> http.client.HTTPConnection:
        """A new HTTP/1.1 connection to the server."""
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def raw(self) -> socket.socket:
        """A plain TCP connection to the server (pipelining, faults)."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def close(self) -> None:
        """Stop the app, then the loop and its thread."""
        self.loop.call_soon_threadsafe(self.app.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
