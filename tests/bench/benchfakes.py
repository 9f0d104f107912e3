"""Fakes for the load generator's tests: a fake clock with a fake sleep, and a fake channel
that answers after a fixed service time on that clock (one request at a time, FIFO, like a
single-threaded server)."""

from __future__ import annotations

import asyncio
import heapq
from typing import Any


class FakeTime:
    """Nanosecond clock that only moves when ``sleep`` is awaited.  ``sleep(0)`` advances it by
    ``poll_ns`` (one turn of an event loop); ``stalls`` maps a time to an extra jump taken the
    first time a sleep reaches it (a descheduled load generator)."""

    def __init__(self, start_ns: int = 1_000_000_000, poll_ns: int = 1_000) -> None:
        self.now = start_ns
        self.poll_ns = poll_ns
        self.stalls: dict[int, int] = {}
        self.channels: list[FakeChannel] = []
        self.sleeps: list[float] = []

    def clock(self) -> int:
        return self.now

    async def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        target = self.now + max(int(s * 1e9), self.poll_ns)
        for at in sorted(self.stalls):
            if self.now <= at <= target:
                target += self.stalls.pop(at)
        # Deliver the replies that fall due on the way, in time order.
        while True:
            due = [(t, i) for i, ch in enumerate(self.channels) if (t := ch.next_due()) is not None]
            due = [d for d in due if d[0] <= target]
            if not due:
                break
            t, i = min(due)
            self.now = max(self.now, t)
            self.channels[i].deliver(self.now)
        self.now = target
        await asyncio.sleep(0)


class FakeChannel:
    """Answers requests one at a time, ``service_ns`` each, in order; ``status_of(cls)`` is the
    status (OK by default).  ``capacity`` limits requests in flight like a real channel."""

    def __init__(self, time: FakeTime, service_ns: int, *, capacity: int = 1 << 30,
                 status_of: Any = None) -> None:
        self.time = time
        self.service_ns = service_ns
        self.capacity = capacity
        self.alive = True
        self.sink: Any = None
        self.status_of = status_of or (lambda cls: 0)
        self.buffered: list[tuple[int, int, int]] = []
        self.queue: list[tuple[int, int, int, int, int]] = []  # (done_at, seq, cls, intended, sent)
        self._busy_until = 0
        self._seq = 0
        self.sent_at: list[int] = []
        self.flushes = 0
        time.channels.append(self)

    @property
    def inflight(self) -> int:
        return len(self.queue) + len(self.buffered)

    def submit(self, cls: int, tpl: int, intended_ns: int, sent_ns: int) -> None:
        self.buffered.append((cls, intended_ns, sent_ns))

    def flush(self) -> None:
        self.flushes += 1
        for cls, intended, sent in self.buffered:
            start = max(self.time.now, self._busy_until)
            self._busy_until = start + self.service_ns
            self._seq += 1
            self.sent_at.append(self.time.now)
            heapq.heappush(self.queue, (self._busy_until, self._seq, cls, intended, sent))
        self.buffered.clear()

    def next_due(self) -> int | None:
        return self.queue[0][0] if self.queue else None

    def deliver(self, now: int) -> None:
        done, _, cls, intended, sent = heapq.heappop(self.queue)
        self.sink(self, cls, self.status_of(cls), intended, sent, done)

    def abandon(self) -> list[tuple[int, int, int]]:
        lost = [(c, i, s) for _, _, c, i, s in self.queue] + list(self.buffered)
        self.queue.clear()
        self.buffered.clear()
        return lost
