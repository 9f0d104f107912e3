"""The two ways a load run sends: open loop at intended times, or sequential (one in flight).

``OpenLoop`` sends request ``i`` at its intended time from an ``ArrivalSchedule`` whatever
the replies do, and charges the reply's latency from that time (no coordinated omission).
While ahead of schedule it sleeps until ``spin_ns`` before the next send, then yields to the
loop with ``sleep(0)`` until it is due: the loop's timers round to whole milliseconds (uvloop
woke a 1.5 ms sleep after 2.1 ms, and returned from a 0.3 ms one at once), far too coarse for
sub-millisecond budgets, so the last stretch is polled (I/O is served meanwhile).  Sends that
are due together go out as one write per connection; when it falls behind it still yields
every ``burst`` sends, so replies keep being read.  A request finds
the next connection with room (round robin); when all are full (HTTP without pipelining) it
waits in a client-side queue, its clock already running.

``Sequential`` is the closed loop for latency floors: each reply's callback sends the next
request, so between a reply and the next send there is no task switch at all.

Both take the clock and the sleep as arguments: tests drive them with a fake clock.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import numpy as np

from tailguard.bench.mix import PriorityMix
from tailguard.bench.openloop import ArrivalSchedule
from tailguard.bench.progress import Progress
from tailguard.bench.recorder import NO_REPLY, Recorder

__all__ = ["Channel", "OpenLoop", "Sequential"]

Clock = Callable[[], int]
Sleep = Callable[[float], Awaitable[Any]]


class Channel(Protocol):
    """What a driver needs of a connection (``WireChannel``, ``HttpChannel``, test fakes)."""

    alive: bool
    capacity: int

    @property
    def inflight(self) -> int:
        """Requests submitted and not yet answered."""
        ...

    def submit(self, cls: int, tpl: int, intended_ns: int, sent_ns: int) -> None:
        """Buffer request template ``tpl`` of class ``cls``; sent at the next ``flush``."""
        ...

    def flush(self) -> None:
        """Write what was submitted."""
        ...

    def abandon(self) -> list[tuple[int, int, int]]:
        """Forget the requests in flight; returns their (cls, intended_ns, sent_ns)."""
        ...


class OpenLoop:
    """Open-loop sending over ``channels``; ``sink`` is the channels' reply callback."""

    def __init__(self, mix: PriorityMix, n_templates: int, recorder: Recorder, *, clock: Clock,
                 sleep: Sleep = asyncio.sleep, spin_ns: int = 2_000_000, burst: int = 64,
                 seed: int = 0, progress: Progress | None = None) -> None:
        self.mix = mix
        self.n_templates = n_templates
        self.recorder = recorder
        self.clock = clock
        self.sleep = sleep
        self.spin_ns = spin_ns
        self.burst = burst
        self.progress = progress
        self.channels: Sequence[Channel] = ()
        self.pending: deque[tuple[int, int, int]] = deque()  # (cls, tpl, intended): no room anywhere
        self.outstanding = 0  # sent or queued, not yet answered
        self.sent = 0
        self.aborted: str | None = None
        self._rng = np.random.default_rng(seed)
        self._rr = 0
        self._dirty: set[int] = set()
        self._t0 = 0

    # -- replies ---------------------------------------------------------------------------
    def sink(self, ch: Any, cls: int, status: int, intended_ns: int, sent_ns: int, done_ns: int) -> None:
        """Record a reply; a freed slot takes the oldest request waiting client-side."""
        self.recorder.on_reply(cls, status, intended_ns, sent_ns, done_ns)
        self.outstanding -= 1
        if self.pending and ch.alive and ch.inflight < ch.capacity:
            pcls, tpl, intended = self.pending.popleft()
            ch.submit(pcls, tpl, intended, done_ns)
            self.recorder.on_send(pcls, intended, done_ns)
            ch.flush()

    # -- sends -----------------------------------------------------------------------------
    def _dispatch(self, cls: int, tpl: int, intended: int, now: int) -> None:
        chans = self.channels
        n = len(chans)
        self.outstanding += 1
        self.sent += 1
        for k in range(n):
            i = (self._rr + k) % n
            ch = chans[i]
            if ch.alive and ch.inflight < ch.capacity:
                self._rr = i + 1
                ch.submit(cls, tpl, intended, now)
                self.recorder.on_send(cls, intended, now)
                self._dirty.add(i)
                return
        self.pending.append((cls, tpl, intended))
        if not any(ch.alive for ch in chans):
            self.aborted = "every connection was closed"

    def _flush(self) -> None:
        for i in self._dirty:
            self.channels[i].flush()
        self._dirty.clear()

    def _show(self, now: int) -> None:
        p = self.progress
        if p is not None:
            elapsed = (now - self._t0) / 1e9
            if p.due(elapsed):
                sent, ok, bad = self.recorder.counts()
                mean, mx = self.recorder.take_window()
                p.update(elapsed, sent, ok, bad, mean, mx)

    async def prime(self, channels: Sequence[Channel], *, timeout_s: float = 5.0) -> None:
        """One round trip on every connection before the schedule starts (answers are counted
        by the recorder only if intended after its ``record_from_ns``, so they are not): the
        first request on a fresh connection often costs the server extra."""
        self.channels = channels
        now = self.clock()
        for ch in channels:
            if ch.alive and ch.inflight < ch.capacity:
                ch.submit(0, 0, now, now)
                self.outstanding += 1
                ch.flush()
        deadline = now + int(timeout_s * 1e9)
        while self.outstanding and self.clock() < deadline:
            await self.sleep(0.001)
        self._give_up()

    async def run(self, channels: Sequence[Channel], schedule: ArrivalSchedule, *,
                  drain_timeout_s: float = 5.0) -> float:
        """Send the whole schedule, then wait up to ``drain_timeout_s`` for the last replies
        (the rest are recorded as ``NO_REPLY``).  Returns the seconds spent waiting for them."""
        self.channels = channels
        self._t0 = schedule.start_ns
        clock, sleep, spin_ns, burst = self.clock, self.sleep, self.spin_ns, self.burst
        n_tpl = self.n_templates
        while not schedule.done and self.aborted is None:
            times = schedule.next_chunk(8192)
            n = len(times)
            classes = self.mix.draw(self._rng, n).tolist()
            tpls = self._rng.integers(0, n_tpl, n).tolist()
            since_yield = 0
            for t, cls, tpl in zip(times.tolist(), classes, tpls, strict=True):
                now = clock()
                if t > now:
                    self._flush()
                    self._show(now)
                    while True:
                        gap = t - now
                        if gap <= 0:
                            break
                        await sleep((gap - spin_ns) / 1e9 if gap > spin_ns else 0)
                        now = clock()
                    since_yield = 0
                elif since_yield >= burst:
                    self._flush()
                    self._show(now)
                    await sleep(0)
                    now = clock()
                    since_yield = 0
                self._dispatch(cls, tpl, t, now)
                since_yield += 1
                if self.aborted is not None:
                    break
        self._flush()
        t_end = clock()
        deadline = t_end + int(drain_timeout_s * 1e9)
        while self.outstanding and clock() < deadline:
            self._show(clock())
            await sleep(0.001)  # polling for the last replies: a millisecond late is harmless here
        waited = (clock() - t_end) / 1e9
        self._give_up()
        return waited

    def _give_up(self) -> None:
        now = self.clock()
        lost = [(cls, intended, intended) for cls, _, intended in self.pending]
        self.pending.clear()
        for ch in self.channels:
            lost.extend(ch.abandon())
        for cls, intended, sent in lost:
            self.recorder.on_reply(cls, NO_REPLY, intended, sent, now)
        self.outstanding = 0


class Sequential:
    """One request in flight: the reply's callback records it and sends the next."""

    def __init__(self, mix: PriorityMix, n_templates: int, recorder: Recorder, *, clock: Clock,
                 seed: int = 0) -> None:
        self.mix = mix
        self.n_templates = n_templates
        self.recorder = recorder
        self.clock = clock
        self._rng = np.random.default_rng(seed)
        self._classes: list[int] = []
        self._tpls: list[int] = []
        self._i = 0
        self._warmup = 0
        self._ch: Channel | None = None
        self._done: asyncio.Future[None] | None = None
        self._last_ns = 0

    def sink(self, ch: Any, cls: int, status: int, intended_ns: int, sent_ns: int, done_ns: int) -> None:
        """Record the reply, then send the next request straight away."""
        self.recorder.on_reply(cls, status, intended_ns, sent_ns, done_ns)
        self._last_ns = done_ns
        if self._i == self._warmup:
            self.recorder.record_from_ns = self.clock()  # everything before was warm-up
        self._next()

    def _next(self) -> None:
        ch = self._ch
        assert ch is not None and self._done is not None
        i = self._i
        if i >= len(self._classes) or not ch.alive:
            if not self._done.done():
                self._done.set_result(None)
            return
        self._i = i + 1
        cls = self._classes[i]
        now = self.clock()
        ch.submit(cls, self._tpls[i], now, now)
        ch.flush()
        self.recorder.on_send(cls, now, now)

    async def run(self, channel: Channel, n: int, *, warmup: int = 0, reply_timeout_s: float = 5.0) -> None:
        """``warmup`` unrecorded requests, then ``n`` recorded ones, one at a time.  A reply
        that does not come within ``reply_timeout_s`` is recorded as ``NO_REPLY`` and ends the run."""
        total = n + warmup
        self._classes = self.mix.draw(self._rng, total).tolist()
        self._tpls = self._rng.integers(0, self.n_templates, total).tolist()
        self._warmup = warmup
        self._i = 0
        self._ch = channel
        self._done = asyncio.get_running_loop().create_future()
        if warmup:
            self.recorder.record_from_ns = 1 << 62
        self._last_ns = self.clock()
        self._next()
        done = self._done
        while not done.done():
            await asyncio.wait([done], timeout=min(reply_timeout_s, 1.0))
            if not done.done() and self.clock() - self._last_ns > reply_timeout_s * 1e9:
                now = self.clock()
                for cls, intended, sent in channel.abandon():
                    self.recorder.on_reply(cls, NO_REPLY, intended, sent, now)
                break
