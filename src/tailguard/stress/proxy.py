"""A delaying TCP proxy: put it between a client and a dependency to make the dependency slow.

``DelayProxy(("127.0.0.1", 6379))`` listens on a free loopback port and forwards every
connection to the upstream.  Bytes from the upstream (the dependency's answers) are held for
``delay_s`` before they are passed on, in order: each chunk read is stamped with the time it
may leave, and a writer per connection waits until then.  ``delay_s`` can be changed at any
time from any thread (a float assignment); it applies to chunks read after the change, so a
slow period ends as soon as the chunks already held have left.  Requests towards the upstream
are never delayed.

The proxy runs its own event loop on a daemon thread (``start``/``close``), so a scenario can
drive it from synchronous code and it does not share a loop with the load it slows.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque

__all__ = ["DelayProxy"]


class DelayProxy:
    """See the module docstring.  ``upstream``: (host, port); ``port``: 0 for a free one."""

    def __init__(self, upstream: tuple[str, int], *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = upstream
        self.host = host
        self.port = port
        self.delay_s = 0.0
        self.connections = 0
        self.bytes_delayed = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        """``host:port`` the proxy listens on (after ``start``)."""
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        """Listen and serve on a daemon thread; returns once listening."""
        ready = threading.Event()
        failed: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, self.host, self.port))
                self.port = int(self._server.sockets[0].getsockname()[1])
            except BaseException as exc:  # reported to start()'s caller
                failed.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=main, name="delay-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            raise failed[0]

    def close(self) -> None:
        """Stop listening, cut every proxied connection and stop the thread."""
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.close()

        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(shut(), loop).result(5.0)
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join(5.0)
        self._loop = None

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            u_reader, u_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            c_writer.close()
            return
        self.connections += 1
        self._writers.update((c_writer, u_writer))
        try:
            await asyncio.gather(self._pipe(c_reader, u_writer, delayed=False),
                                 self._pipe(u_reader, c_writer, delayed=True), return_exceptions=True)
        finally:
            for w in (c_writer, u_writer):
                self._writers.discard(w)
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    delayed: bool) -> None:
        if not delayed:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            finally:
                writer.close()
            return
        held: deque[tuple[float, bytes]] = deque()
        more = asyncio.Event()
        eof = False

        async def read() -> None:
            nonlocal eof
            try:
                while data := await reader.read(65536):
                    held.append((time.monotonic() + self.delay_s, data))
                    more.set()
            finally:
                eof = True
                more.set()

        task = asyncio.get_running_loop().create_task(read())
        try:
            while True:
                while held:
                    due, data = held[0]
                    wait = due - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    held.popleft()
                    if self.delay_s > 0:
                        self.bytes_delayed += len(data)
                    writer.write(data)
                    await writer.drain()
                if eof:
                    break
                more.clear()
                await more.wait()
        finally:
            task.cancel()
            writer.close()
