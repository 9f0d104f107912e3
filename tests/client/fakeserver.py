"""A scriptable in-test tailguard server: controllable slow, dead, draining or failing endpoints.

It speaks the real protocol (``tailguard.schema``) over loopback TCP or a Unix socket, with a
thread per connection.  What it does with each ``Request`` is ``server.script(conn, req)``:
``echo`` (answer at once, output ``p = float(key)``), ``hold`` (keep it until ``release``),
``die`` (close the connection and stop listening), or any callable.  Tests synchronise on
``wait_requests(n)`` (a condition variable), never on sleeps.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

import msgspec

from tailguard.schema.frames import FrameReader, encode_frame, server_decoder
from tailguard.schema.wire import Hello, Notice, Ping, Pong, Refused, Reply, Request, Status, Welcome

WAIT_S = 10.0  # a safety limit for condition waits; never reached when the test is right


def value_of(key: Any) -> float:
    """The echo server's output for a key."""
    return float(key) if not isinstance(key, str) else float(len(key))


class FakeConn:
    """The server side of one client connection."""

    def __init__(self, server: FakeServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.enc = msgspec.msgpack.Encoder()
        self.lock = threading.Lock()
        self.closed = False

    def send(self, *msgs: Any) -> None:
        """Write ``msgs`` in one ``sendall`` (ignored once closed)."""
        data = b"".join(encode_frame(self.enc, m) for m in msgs)
        with self.lock:
            if self.closed:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def reply(self, req: Request, *extra: Any) -> None:
        """Answer ``req`` as the echo server would (then send ``extra`` messages)."""
        self.send(echo_reply(req), *extra)

    def close(self) -> None:
        """Close the connection (the client sees EOF)."""
        with self.lock:
            if not self.closed:
                self.closed = True
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)
                self.sock.close()


def echo_reply(req: Request) -> Reply:
    """An OK reply: ``p = float(key)`` per row, rung 0, flags 0, fixed timings."""
    if req.batch:
        keys = list(req.keys)
        return Reply(req.id, 0, [value_of(k) for k in keys], len(keys), "v1", [0] * len(keys),
                     [0] * len(keys), [1, 2, 3, 4, 5, 15])
    return Reply(req.id, 0, [value_of(req.keys)], 1, "v1", [0], [0], [1, 2, 3, 4, 5, 15])


class FakeServer:
    """See the module docstring.  Use as a context manager (closes everything)."""

    def __init__(self, *, unix_path: str | None = None, port: int = 0, refuse: Refused | None = None,
                 max_frame: int = 1 << 20, version: int = 1) -> None:
        self.script: Callable[[FakeConn, Request], None] = self.echo
        self.state = "ready"
        self.refuse = refuse
        self.max_frame = max_frame
        self.version = version
        self.requests: list[Request] = []
        self.pings = 0
        self.conns: list[FakeConn] = []
        self.held: list[tuple[FakeConn, Request]] = []
        self.cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        if unix_path is not None:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(unix_path)
            self.address = f"unix://{unix_path}"
        else:
            self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind(("127.0.0.1", port))  # a given port: a "restart" at the same address
            self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.listener.listen(64)
        self._spawn(self._accept)

    # -- scripts -------------------------------------------------------------------------------
    def echo(self, conn: FakeConn, req: Request) -> None:
        """Answer at once."""
        conn.reply(req)

    def hold(self, conn: FakeConn, req: Request) -> None:
        """Keep the request unanswered until ``release``."""
        with self.cond:
            self.held.append((conn, req))

    def die(self, conn: FakeConn, req: Request) -> None:
        """Stop listening and drop every connection, with this request in flight."""
        self.stop_listening()
        for c in list(self.conns):
            c.close()

    def reject(
        self, status: Status, retry_after_us: int = 0, field: str = ""
    ) -> Callable[[FakeConn, Request], None]:
        """A script answering every request with ``status``."""
        def script(conn: FakeConn, req: Request) -> None:
            conn.send(Reply(req.id, int(status), retry_after_us=retry_after_us, error=f"{status.code}!",
                            field=field))
        return script

    def release(self, reverse: bool = False) -> None:
        """Answer every held request (in arrival order, or reversed)."""
        with self.cond:
            held, self.held = self.held, []
        for conn, req in reversed(held) if reverse else held:
            conn.reply(req)

    # -- synchronisation -------------------------------------------------------------------------
    def wait_requests(self, n: int) -> list[Request]:
        """Block until ``n`` requests have arrived in total; returns them."""
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.requests) >= n, WAIT_S), f"{len(self.requests)} < {n}"
            return list(self.requests)

    def wait_held(self, n: int) -> None:
        """Block until ``n`` requests are held."""
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.held) >= n, WAIT_S), f"{len(self.held)} < {n}"

    def notice(self, state: str = "draining") -> None:
        """Send ``Notice(state)`` on every open connection."""
        for c in list(self.conns):
            c.send(Notice(state))

    def stop_listening(self) -> None:
        """Close the listener: new connections are refused."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self.listener.close()

    def close(self) -> None:
        """Stop listening, close every connection and join the threads."""
        self.stop_listening()
        for c in list(self.conns):
            c.close()
        for t in self._threads:
            t.join(WAIT_S)

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- threads ---------------------------------------------------------------------------------
    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            conn = FakeConn(self, sock)
            self.conns.append(conn)
            self._spawn(self._serve, conn)

    def _serve(self, conn: FakeConn) -> None:
        reader = FrameReader(self.max_frame)
        decode = server_decoder().decode
        greeted = False
        while True:
            try:
                data = conn.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                conn.close()
                return
            for frame in reader.feed(data):
                msg = decode(frame)
                if not greeted:
                    assert isinstance(msg, Hello)
                    if self.refuse is not None:
                        conn.send(self.refuse)
                        conn.close()
                        return
                    greeted = True
                    conn.send(Welcome(self.version, "fake", "toy", self.max_frame, os.getpid(), ["item"],
                                      ["price", "size"], ["p"], ["primary", "fast", "default"],
                                      ["critical", "normal", "bulk"], "v1"))
                elif isinstance(msg, Ping):
                    with self.cond:
                        self.pings += 1
                    conn.send(Pong(msg.id, self.state, 0))
                elif isinstance(msg, Request):
                    with self.cond:
                        self.requests.append(msg)
                        self.cond.notify_all()
                    self.script(conn, msg)
                    with self.cond:
                        self.cond.notify_all()


def refused_address() -> tuple[str, socket.socket]:
    """A loopback address that refuses connections (a bound socket that does not listen);
    keep the returned socket open for as long as the address must stay refused."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return f"127.0.0.1:{s.getsockname()[1]}", s
