"""The invalidation link: keeps one process's near-cache coherent with writes made anywhere.

Two mechanisms, one listener class (``InvalidationMode``):

* ``TRACKING`` (the default): Redis client-side caching in broadcast mode.  The listener's own
  RESP3 connection sends ``CLIENT TRACKING ON BCAST PREFIX tg:{<service>:`` and Redis pushes
  ``invalidate [keys]`` for every change of a matching key, whoever made it (a tailguard
  writer, a backfill script, ``redis-cli``, an expiry, ``FLUSHALL``): writers need to do
  nothing, so a writer that forgets cannot break coherence.
* ``PUBSUB``: the listener subscribes to ``tg:inv:<service>``, and writers ``PUBLISH`` the
  keys they changed in the same pipeline as the writes.  Works on any Redis-compatible
  server (no tracking needed) and, in a Cluster, ``PUBLISH`` reaches every node, while
  tracking needs one listener per master.

Both push over an already-open connection, so the invalidation latency of either is one
network hop after the write is applied; benchmarks/features.py measures both.

Link state goes to the ``NearCache``: ``link_connected`` once the subscription is confirmed
(which clears the cache), ``link_heard`` on every frame, ``link_lost`` on any failure.  When
idle for ``heartbeat_s`` the listener sends PING; a link silent for twice that is declared
lost, so a dead peer is found within ``2 * heartbeat_s`` even without a TCP reset.

Threads: ``start()`` runs ``connect``/``pump`` on a daemon thread with capped exponential
backoff between attempts; tests call ``connect()``/``pump()`` themselves instead.  The clock is
injected (heartbeats and link times); socket waits are real time.
"""

from __future__ import annotations

import enum
import select
import socket
import threading
from typing import Any

from tailguard.clock import Clock, MonotonicClock
from tailguard.errors import ValidationError
from tailguard.features.online.codec import decode_invalidation
from tailguard.features.online.errors import FeatureStoreError, FeatureStoreUnavailable
from tailguard.features.online.nearcache import NearCache
from tailguard.features.online.resp3 import ErrorReply, Push, Resp3Parser, is_push, pack_command

__all__ = ["InvalidationListener", "InvalidationMode"]


class InvalidationMode(enum.Enum):
    """How writes reach the near-cache (see the module docstring)."""

    TRACKING = "tracking"
    PUBSUB = "pubsub"


class InvalidationListener:
    """One connection that applies pushed invalidations to a ``NearCache`` (see the module docstring)."""

    def __init__(
        self,
        cache: NearCache,
        conn_kwargs: dict[str, Any],
        *,
        mode: InvalidationMode,
        prefix: bytes,
        channel: bytes,
        clock: Clock | None = None,
        heartbeat_s: float = 0.5,
        connect_timeout_s: float = 0.5,
        max_backoff_s: float = 1.0,
    ) -> None:
        self.cache = cache
        self.mode = mode
        self._kwargs = conn_kwargs
        self._prefix = prefix
        self._channel = channel
        self._clock: Clock = clock or MonotonicClock()
        self._heartbeat_ns = round(heartbeat_s * 1e9)
        self._connect_timeout_s = connect_timeout_s
        self._max_backoff_s = max_backoff_s
        self._sock: socket.socket | None = None
        self._parser = Resp3Parser()
        self._ping_sent_ns = 0
        self._stop = threading.Event()
        # select() also watches this pair, so close() wakes the thread at once.
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None
        self.connects = 0
        self.failures = 0
        self.messages = 0
        self.keys_invalidated = 0
        self.malformed = 0

    @property
    def connected(self) -> bool:
        """True while the subscription is established."""
        return self._sock is not None

    # -- connection -------------------------------------------------------------------------
    def connect(self) -> None:
        """Open the link and subscribe; on success the near-cache is cleared and trusted again.

        Raises ``FeatureStoreUnavailable`` when the server cannot be reached or refuses.
        """
        self.close_link()
        try:
            sock = self._open()
            hello: list[bytes | str | int] = ["HELLO", 3]
            if self._kwargs.get("password"):
                hello += ["AUTH", self._kwargs.get("username") or "default", self._kwargs["password"]]
            if self.mode is InvalidationMode.TRACKING:
                sub = pack_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", self._prefix)
            else:
                sub = pack_command("SUBSCRIBE", self._channel)
            sock.sendall(pack_command(*hello) + sub)
            parser = Resp3Parser()
            got: list[Any] = []
            while len(got) < 2:  # the HELLO map, then +OK or the subscribe confirmation push
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("the server closed the connection during setup")
                parser.feed(data)
                got += parser.frames()
        except (OSError, ValueError) as exc:
            self.failures += 1
            raise FeatureStoreUnavailable(f"invalidation link: cannot connect: {exc}") from exc
        bad = [f for f in got[:2] if isinstance(f, ErrorReply)]
        if bad:
            sock.close()
            self.failures += 1
            raise FeatureStoreError(f"invalidation link refused: {bytes(bad[0]).decode(errors='replace')}")
        sock.settimeout(None)
        self._sock, self._parser = sock, parser
        self.connects += 1
        self.cache.link_connected()
        self._apply(got[2:])

    def _open(self) -> socket.socket:
        path = self._kwargs.get("path")
        if path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self._connect_timeout_s)
            sock.connect(path)
            return sock
        addr = (self._kwargs.get("host", "127.0.0.1"), int(self._kwargs.get("port", 6379)))
        sock = socket.create_connection(addr, timeout=self._connect_timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def close_link(self) -> None:
        """Close the link (the near-cache stops trusting its entries)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self.cache.link_lost()

    # -- receiving ----------------------------------------------------------------------------
    def pump(self, timeout_s: float = 0.0) -> int:
        """Apply what arrives within ``timeout_s``; send a heartbeat when due.  Returns keys invalidated.

        Raises ``FeatureStoreUnavailable`` (after closing the link) when the link fails.
        """
        sock = self._sock
        if sock is None:
            raise FeatureStoreUnavailable("invalidation link is not connected")
        try:
            ready, _, _ = select.select([sock, self._wake_r], [], [], timeout_s)
            if sock in ready:
                data = sock.recv(262144)
                if not data:
                    raise ConnectionError("the server closed the invalidation link")
                self._parser.feed(data)
            n = self._apply(self._parser.frames())
            self._heartbeat(sock)
            return n
        except (OSError, ValueError) as exc:
            self.failures += 1
            self.close_link()
            raise FeatureStoreUnavailable(f"invalidation link lost: {exc}") from exc

    def _heartbeat(self, sock: socket.socket) -> None:
        now = self._clock.now_ns()
        quiet = now - self.cache.last_heard_ns
        if quiet > 2 * self._heartbeat_ns:
            raise ConnectionError(f"invalidation link silent for {quiet / 1e9:.3f} s")
        if quiet >= self._heartbeat_ns and now - self._ping_sent_ns >= self._heartbeat_ns:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            self._ping_sent_ns = now

    def _apply(self, frames: list[Any]) -> int:
        if not frames:
            return 0
        self.cache.link_heard()
        n = 0
        for f in frames:
            if not isinstance(f, Push):
                if isinstance(f, ErrorReply):
                    text = bytes(f).decode(errors="replace")
                    raise ConnectionError(f"error on the invalidation link: {text}")
                continue  # PONG
            keys: list[bytes] | None = None
            if is_push(f, b"invalidate", (2,)):
                if f[1] is None:  # FLUSHALL/FLUSHDB: everything may have changed
                    self.cache.clear()
                    continue
                keys = f[1]
            elif is_push(f, b"message", (3,)) and f[1] == self._channel:
                try:
                    keys = decode_invalidation(f[2])
                except ValidationError:
                    # Not ours to crash on, but the keys it meant are unknown: drop everything.
                    self.malformed += 1
                    self.cache.clear()
                    continue
            if keys:
                self.messages += 1
                self.keys_invalidated += len(keys)
                self.cache.invalidate(keys)
                n += len(keys)
        return n

    # -- the background thread ------------------------------------------------------------
    def start(self) -> None:
        """Run the link on a daemon thread: connect, pump, reconnect with backoff after failures."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tailguard-invalidation", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        backoff = 0.01
        while not self._stop.is_set():
            try:
                if self._sock is None:
                    self.connect()
                    backoff = 0.01
                self.pump(self._heartbeat_ns / 2e9)
            except (FeatureStoreError, OSError, ValueError):
                self.close_link()
                self._stop.wait(backoff)
                backoff = min(2 * backoff, self._max_backoff_s)

    def close(self) -> None:
        """Stop the thread (if started) and close the link (idempotent)."""
        self._stop.set()
        if self._wake_w.fileno() >= 0:
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.close_link()
        self._wake_r.close()
        self._wake_w.close()

    def statistics(self) -> dict[str, Any]:
        """Mode, link state, connects, failures, messages and keys invalidated."""
        return {
            "mode": self.mode.value,
            "connected": self.connected,
            "connects": self.connects,
            "failures": self.failures,
            "messages": self.messages,
            "keys_invalidated": self.keys_invalidated,
            "malformed": self.malformed,
        }
