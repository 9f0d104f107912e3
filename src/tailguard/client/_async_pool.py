"""The async client's connections per endpoint, background connects and health checks.

``acquire`` returns the least-loaded usable connection to an endpoint.  When there is none,
the caller awaits a connect; concurrent callers share one connect task per endpoint (no
stampede).  When the best connection is already busy and the pool has room, another is
opened in the background and the call pipelines on the busy one meanwhile.

Owned by the event loop of the ``AsyncClient``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from tailguard.client._async_conn import AsyncConn
from tailguard.client._channel import Lost
from tailguard.client._errors import ConnectFailed
from tailguard.client._health import EndpointState, Slot

if TYPE_CHECKING:
    from tailguard.client._call import Call
    from tailguard.client._core import Core

__all__ = ["Pools"]


class _Pool:
    __slots__ = ("connecting", "conns")

    def __init__(self) -> None:
        self.conns: list[AsyncConn] = []
        self.connecting: asyncio.Task[AsyncConn] | None = None


class Pools:
    """Every endpoint's connections (see the module docstring)."""

    def __init__(self, core: Core, health_interval_s: float, *, warm: int = 1) -> None:
        self._core = core
        self._warm = warm
        self._pools = [_Pool() for _ in core.health.slots]
        self._interval_s = health_interval_s
        self._checker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        core.health.on_down = self._on_down

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called."""
        return self._closed

    def ready(self, slot: Slot) -> AsyncConn | None:
        """The least-loaded usable open connection to ``slot`` when it is idle or the pool is
        full (no waiting, no new connection); None sends the caller to ``acquire``."""
        pool = self._pools[slot.index]
        best: AsyncConn | None = None
        usable = 0
        for c in pool.conns:
            if c.usable:
                usable += 1
                if best is None or len(c.pending) < len(best.pending):
                    best = c
        if usable < len(pool.conns):
            pool.conns[:] = [c for c in pool.conns if c.usable]
            if usable < self._warm and best is not None and pool.connecting is None and not self._closed:
                self._connect(slot).add_done_callback(_retrieve)  # a warm one died: reopen it aside
        if best is None or (best.pending and len(pool.conns) < self._core.pool_size):
            return None
        return best

    async def acquire(self, slot: Slot, call: Call, avoid: AsyncConn | None = None) -> AsyncConn | None:
        """A connection to ``slot`` (not ``avoid``); None when ``avoid`` was the only one and
        the pool is full, or the endpoint went out of rotation.  Raises ``ConnectFailed``."""
        pool = self._pools[slot.index]
        conns = pool.conns
        if any(not c.usable for c in conns):
            conns[:] = [c for c in conns if c.usable]
            if len(conns) < self._warm and pool.connecting is None and slot.state is EndpointState.UP:
                self._connect(slot).add_done_callback(_retrieve)  # top the warm set up again
        best: AsyncConn | None = None
        for c in conns:
            if c is not avoid and (best is None or len(c.pending) < len(best.pending)):
                best = c
        size = self._core.pool_size
        if best is not None:
            if best.pending and len(conns) < size and pool.connecting is None:
                self._connect(slot).add_done_callback(_retrieve)
            return best
        if avoid is not None and len(conns) >= size:
            return None
        task = pool.connecting or self._connect(slot)
        left = min(self._core.connect_timeout_s, (call.deadline_ns - self._core.now()) / 1e9)
        if left <= 0:
            raise call.timed_out()
        try:
            conn = await asyncio.wait_for(asyncio.shield(task), left)
        except TimeoutError:
            raise call.timed_out() from None
        return conn if conn.usable and slot.state is EndpointState.UP else None

    async def fill(self, slot: Slot) -> None:
        """Open connections to ``slot`` until ``warm`` are usable (``AsyncClient.connect``);
        a failed connect stops it (the endpoint is marked down)."""
        pool = self._pools[slot.index]
        for _ in range(2 * self._warm):
            if self._closed or sum(c.usable for c in pool.conns) >= self._warm:
                return
            try:
                await (pool.connecting or self._connect(slot))
            except ConnectFailed:
                return

    def _connect(self, slot: Slot) -> asyncio.Task[AsyncConn]:
        pool = self._pools[slot.index]
        task = asyncio.get_running_loop().create_task(self._open(slot))
        pool.connecting = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _open(self, slot: Slot) -> AsyncConn:
        pool = self._pools[slot.index]
        try:
            conn = await AsyncConn.open(self._core, slot, self._core.connect_timeout_s)
        except ConnectFailed as err:
            self._core.health.mark_down(slot, str(err))
            raise
        finally:
            pool.connecting = None
        if self._closed:
            conn.close()
        else:
            pool.conns.append(conn)
        return conn

    def _on_down(self, slot: Slot) -> None:
        pool = self._pools[slot.index]
        for c in pool.conns:
            if not c.pending:
                c.close()
        pool.conns[:] = [c for c in pool.conns if not c.closed]
        if self._interval_s > 0 and self._checker is None and not self._closed:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._checker = loop.create_task(self._check_loop())

    async def probe(self, slot: Slot) -> bool:
        """Health-check ``slot``: connect, handshake, ``Ping``; readmit it on ``ready``."""
        core = self._core
        core.stats.inc("health_checks")
        try:
            conn = await AsyncConn.open(core, slot, core.connect_timeout_s)
        except ConnectFailed as err:
            core.health.check_failed(slot, f"health check: {err}")
            return False
        try:
            state = await conn.ping(core.connect_timeout_s)
        except Lost as exc:
            state = f"lost ({exc})"
        if state != "ready" or self._closed:
            conn.close()
            core.health.check_failed(slot, f"health check: {state}")
            return False
        core.health.mark_up(slot, conn.ch.welcome)
        self._pools[slot.index].conns.append(conn)
        return True

    async def check_health(self) -> dict[str, str]:
        """Probe every endpoint due for a check; returns each endpoint's state."""
        for slot in self._core.health.due():
            await self.probe(slot)
        return self._core.health.states()

    async def _check_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(min(self._interval_s, self._core.health.next_due_s() or 1e9))
            await self.check_health()

    def statistics(self) -> dict[str, Any]:
        """Open connections and in-flight requests, by endpoint address."""
        slots = self._core.health.slots
        return {
            "connections": {s.label: sum(not c.closed for c in self._pools[s.index].conns) for s in slots},
            "in_flight": {s.label: sum(len(c.pending) for c in self._pools[s.index].conns) for s in slots},
        }

    async def close(self) -> None:
        """Close every connection; cancel the health task and pending connects."""
        self._closed = True
        tasks = list(self._tasks)
        if self._checker is not None:
            tasks.append(self._checker)
        for t in tasks:
            t.cancel()
        # Cancelled, or a connect error nobody awaits any more: gathered and dropped.
        await asyncio.gather(*tasks, return_exceptions=True)
        for pool in self._pools:
            for c in pool.conns:
                c.close()
            pool.conns.clear()


def _retrieve(task: asyncio.Task[AsyncConn]) -> None:
    # A background connect's failure is already recorded (endpoint marked down); read it
    # here so asyncio does not log "exception was never retrieved".
    if not task.cancelled():
        task.exception()
