"""The blocking client's idle connections per endpoint, and its health checks.

A call checks a connection out (``acquire``), uses it alone, and gives it back
(``release``).  Up to ``pool_size`` idle connections are kept per endpoint; under more
concurrency extra connections are opened and closed when given back.  A connection whose
call timed out, or that carried a losing hedge copy, goes back to the pool: its stale reply
is read and discarded (and counted) when it is next checked out.  When an endpoint leaves
rotation its idle connections are closed and, if ``health_interval_s > 0``, one background
thread (started then, not per request) checks the endpoints that are due.

Thread safety: any thread may call any method; the idle lists are guarded by one lock, which
is never held across I/O.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from tailguard.client._channel import Lost
from tailguard.client._errors import ConnectFailed
from tailguard.client._health import EndpointState, Slot
from tailguard.client._sync_conn import SyncConn

if TYPE_CHECKING:
    from tailguard.client._call import Call
    from tailguard.client._core import Core

__all__ = ["SyncPools"]

_UP = EndpointState.UP
#: A connection with more replies than this still owed to abandoned calls is closed instead
#: of pooled (its server is very slow; a fresh connection does not queue behind them).
_MAX_ABANDONED = 64


class SyncPools:
    """Every endpoint's idle connections, and the health checker (see the module docstring)."""

    def __init__(self, core: Core, health_interval_s: float) -> None:
        self._core = core
        self._lock = threading.Lock()
        self._idle: list[list[SyncConn]] = [[] for _ in core.health.slots]
        self._interval_s = health_interval_s
        self._checker: threading.Thread | None = None
        self.closed = threading.Event()
        core.health.on_down = self._on_down

    def acquire(self, slot: Slot, call: Call) -> SyncConn | None:
        """An idle connection to ``slot`` (checked without waiting), else a new one within the
        connect timeout and the call's deadline.  None if ``slot`` left rotation meanwhile.
        Raises ``ConnectFailed`` (the endpoint is marked down) or the call's Timeout."""
        pool = self._idle[slot.index]
        while True:
            with self._lock:
                conn = pool.pop() if pool else None
            if conn is None:
                break
            if conn.usable():
                return conn
            conn.close()
            if slot.state is not _UP:
                return None
        core = self._core
        timeout = min(core.connect_timeout_s, (call.deadline_ns - core.now()) / 1e9)
        if timeout <= 0:
            raise call.timed_out()
        try:
            conn = SyncConn.open(core, slot, timeout)
        except ConnectFailed as err:
            core.health.mark_down(slot, str(err))
            raise
        if conn.ch.draining:
            conn.close()
            return None
        return conn

    def release(self, conn: SyncConn) -> None:
        """Give ``conn`` back: pooled if healthy and there is room, else closed."""
        ch = conn.ch
        if (conn.closed or ch.draining or ch.fatal is not None or ch.slot.state is not _UP
                or len(ch.abandoned) > _MAX_ABANDONED or self.closed.is_set()):
            conn.close()
            return
        pool = self._idle[ch.slot.index]
        with self._lock:
            if len(pool) < self._core.pool_size:
                pool.append(conn)
                return
        conn.close()

    def idle(self) -> dict[str, int]:
        """Idle connections, by endpoint address."""
        with self._lock:
            return {s.label: len(self._idle[s.index]) for s in self._core.health.slots}

    def _on_down(self, slot: Slot) -> None:
        with self._lock:
            conns = list(self._idle[slot.index])
            self._idle[slot.index].clear()
        for c in conns:
            c.close()
        if self._interval_s > 0 and self._checker is None and not self.closed.is_set():
            with self._lock:
                if self._checker is None:
                    self._checker = threading.Thread(target=self._check_loop, daemon=True,
                                                     name="tailguard-client-health")
                    self._checker.start()

    # -- health --------------------------------------------------------------------------------
    def probe(self, slot: Slot) -> bool:
        """Health-check ``slot`` on the calling thread: connect, handshake, ``Ping``.  On a
        ``ready`` Pong it is readmitted and the connection pooled; else its backoff doubles."""
        core = self._core
        core.stats.inc("health_checks")
        try:
            conn = SyncConn.open(core, slot, core.connect_timeout_s)
        except ConnectFailed as err:
            core.health.check_failed(slot, f"health check: {err}")
            return False
        try:
            state = conn.ping(core.connect_timeout_s)
        except Lost as exc:
            state = f"lost ({exc})"
        if state != "ready":
            conn.close()
            core.health.check_failed(slot, f"health check: {state}")
            return False
        core.health.mark_up(slot, conn.ch.welcome)
        self.release(conn)
        return True

    def check_health(self) -> dict[str, str]:
        """Probe every endpoint due for a check; returns each endpoint's state."""
        for slot in self._core.health.due():
            self.probe(slot)
        return self._core.health.states()

    def _check_loop(self) -> None:
        while not self.closed.wait(min(self._interval_s, self._core.health.next_due_s() or 1e9)):
            self.check_health()

    def close(self) -> None:
        """Close every idle connection and stop the health checker (idempotent)."""
        self.closed.set()
        with self._lock:
            conns = [c for pool in self._idle for c in pool]
            for pool in self._idle:
                pool.clear()
        for c in conns:
            c.close()
        if self._checker is not None and self._checker is not threading.current_thread():
            self._checker.join()
