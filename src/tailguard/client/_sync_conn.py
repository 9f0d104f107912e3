"""A blocking-client connection: a non-blocking socket, a selector and a ``Channel``.

The socket is blocking (with a timeout) only while connecting and during the handshake;
after that it is non-blocking and every wait goes through a selector with an explicit
timeout, so one thread can wait on several connections at once (hedging) without a thread
per request.  ``inbox`` holds replies and pongs read but not yet taken by their caller.

Owned by one thread at a time: the pool hands a connection to one call, which gives it back.
"""

from __future__ import annotations

import selectors
import socket
import time
from typing import TYPE_CHECKING

from tailguard.client._channel import Channel, Lost
from tailguard.client._errors import ConnectFailed
from tailguard.schema.wire import Ping, Pong, Reply

if TYPE_CHECKING:
    from tailguard.client._core import Core
    from tailguard.client._health import Slot

__all__ = ["SyncConn", "new_selector"]

#: PollSelector registers without a system call (epoll needs one per register/unregister),
#: which matters for the per-call selectors of hedged calls.
_Selector: type[selectors.BaseSelector] = getattr(selectors, "PollSelector", selectors.SelectSelector)
_RECV = 1 << 16


def new_selector() -> selectors.BaseSelector:
    """A selector of the cheapest kind for a handful of sockets."""
    return _Selector()


class SyncConn:
    """One connection of the sync client (see the module docstring)."""

    __slots__ = ("ch", "closed", "inbox", "sel", "sock")

    def __init__(self, sock: socket.socket, ch: Channel) -> None:
        self.sock = sock
        self.ch = ch
        self.inbox: dict[int, Reply | Pong] = {}
        self.closed = False
        self.sel = new_selector()
        self.sel.register(sock, selectors.EVENT_READ)

    @classmethod
    def open(cls, core: Core, slot: Slot, timeout_s: float) -> SyncConn:
        """Connect to ``slot`` and complete the handshake within ``timeout_s`` seconds.

        Raises ``ConnectFailed`` (socket errors are translated here)."""
        label = slot.label
        deadline = time.monotonic() + timeout_s
        try:
            sock = slot.endpoint.open_socket(timeout_s)
        except OSError as exc:
            core.stats.inc("connect_failures")
            raise ConnectFailed(f"cannot connect to {label}: {exc}", endpoint=label) from exc
        ch = Channel(core, slot)
        try:
            sock.sendall(core.hello_frame)
            msgs: list[object] = []
            while not msgs:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no Welcome within the connect timeout")
                sock.settimeout(left)
                data = sock.recv(_RECV)
                if not data:
                    raise ConnectionResetError("closed by the server during the handshake")
                msgs = ch.messages(data)
            ch.handshake(msgs[0])
            sock.setblocking(False)
        except (OSError, Lost, ConnectFailed) as exc:
            sock.close()
            core.stats.inc("connect_failures")
            if isinstance(exc, ConnectFailed):
                raise
            raise ConnectFailed(f"handshake with {label} failed: {exc}", endpoint=label) from exc
        core.stats.inc("connections_opened")
        conn = cls(sock, ch)
        conn._sort(msgs[1:])
        return conn

    def _sort(self, msgs: list[object]) -> None:
        sort = self.ch.sort
        inbox = self.inbox
        for m in msgs:
            r = sort(m)
            if r is not None:
                inbox[r.id] = r

    def send(self, frame: bytearray, deadline_ns: int, now_ns: int) -> None:
        """Write the whole ``frame`` (one ``send`` in the common case).  Raises ``Lost``."""
        sock = self.sock
        try:
            n = sock.send(frame)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            raise Lost(str(exc)) from exc
        if n == len(frame):
            return
        view = memoryview(frame)[n:]
        with new_selector() as sel:
            sel.register(sock, selectors.EVENT_WRITE)
            limit = time.monotonic() + max(0.0, (deadline_ns - now_ns) / 1e9)
            while view:
                left = limit - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise Lost("send timed out (the server is not reading)")
                try:
                    view = view[sock.send(view):]
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise Lost(str(exc)) from exc

    def pump(self) -> None:
        """Read what the socket holds now (non-blocking) and sort it.  Raises ``Lost`` on EOF
        or a socket error; does nothing if no data is ready."""
        try:
            data = self.sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            raise Lost(str(exc)) from exc
        if not data:
            raise Lost("closed by the server")
        self._sort(self.ch.messages(data))

    def usable(self) -> bool:
        """Check an idle connection before reuse: reads anything pending (late replies, a
        draining notice) without waiting; False when it is closed, draining or broken."""
        if self.closed:
            return False
        try:
            while self.sel.select(0):
                self.pump()
        except Lost:
            return False
        self.inbox.clear()  # nothing is in flight on an idle connection: anything here is stale
        ch = self.ch
        return not ch.draining and ch.fatal is None

    def ping(self, timeout_s: float) -> str:
        """Send ``Ping`` and wait for its ``Pong``; returns the server state ("ready", ...).
        Raises ``Lost`` (also when no Pong comes within ``timeout_s``)."""
        req_id = self.ch.take_id()
        frame = self.ch.encode(Ping(req_id))
        now = time.monotonic_ns()
        self.send(frame, now + round(timeout_s * 1e9), now)
        limit = time.monotonic() + timeout_s
        while True:
            got = self.inbox.pop(req_id, None)
            if isinstance(got, Pong):
                return got.state
            left = limit - time.monotonic()
            if left <= 0 or not self.sel.select(left):
                raise Lost("no Pong within the health-check timeout")
            self.pump()

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if not self.closed:
            self.closed = True
            self.sel.close()
            self.sock.close()
