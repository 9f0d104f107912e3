"""The open-loop and sequential drivers on a fake clock: pacing, latency from intended times
(no coordinated omission), client-side queueing, bursts, drain timeout and abort."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from benchfakes import FakeChannel, FakeTime

from tailguard.bench.drivers import OpenLoop, Sequential
from tailguard.bench.mix import parse_budgets, parse_mix
from tailguard.bench.openloop import ArrivalSchedule
from tailguard.bench.recorder import Recorder

US = 1_000
MS = 1_000_000


def open_loop(ft: FakeTime, mix_text: str = "bulk", budgets: str = "", **kw: Any) -> OpenLoop:
    mix = parse_mix(mix_text, parse_budgets(budgets))
    return OpenLoop(mix, 4, Recorder(mix), clock=ft.clock, sleep=ft.sleep, **kw)


def channel(ft: FakeTime, loop: OpenLoop, service_ns: int, **kw: Any) -> FakeChannel:
    ch = FakeChannel(ft, service_ns, **kw)
    ch.sink = loop.sink
    return ch


def drive(loop: OpenLoop, chans: list[FakeChannel], sched: ArrivalSchedule, drain_s: float = 5.0) -> float:
    return asyncio.run(loop.run(chans, sched, drain_timeout_s=drain_s))


def test_requests_go_out_at_their_intended_times() -> None:
    ft = FakeTime()
    loop = open_loop(ft, spin_ns=200 * US)
    ch = channel(ft, loop, 100 * US)
    sched = ArrivalSchedule(ft.now + 10 * MS, 1000.0, 0.1)
    drive(loop, [ch], sched)
    intended = [sched.start_ns + i * MS for i in range(100)]
    assert len(ch.sent_at) == 100
    assert all(0 <= s - t < 2 * US for s, t in zip(ch.sent_at, intended, strict=True))
    rep = loop.recorder.report(0.1)
    assert rep["ok"] == 100 and rep["latency_us"]["max"] == pytest.approx(100, rel=1e-2)
    # It slept through each 1 ms gap but the last 200 us, which it polled (sleep(0)).
    gaps = [s for s in ft.sleeps if 0.7e-3 < s < 0.81e-3]
    assert len(gaps) == 99
    assert ft.sleeps.count(0) >= 99 * 200 // 2


def test_without_a_spin_window_it_only_sleeps() -> None:
    ft = FakeTime()
    loop = open_loop(ft, spin_ns=0)
    ch = channel(ft, loop, 10 * US)
    drive(loop, [ch], ArrivalSchedule(ft.now, 1000.0, 0.05))
    assert ft.sleeps.count(0) <= 1


def test_a_stalled_generator_is_charged_from_the_intended_time() -> None:
    ft = FakeTime()
    loop = open_loop(ft, "critical", "critical=300us")
    ch = channel(ft, loop, 50 * US)
    start = ft.now + 10 * MS
    ft.stalls[start + 20 * MS + 500 * US] = 5 * MS  # descheduled for 5 ms mid-run
    drive(loop, [ch], ArrivalSchedule(start, 1000.0, 0.1))
    rep = loop.recorder.report(0.1)
    c = rep["classes"]["critical"]
    assert c["ok"] == 100
    # The requests due during the stall were sent up to ~5 ms late; their latency counts it.
    assert rep["send_lag_us"]["max"] > 4_000
    assert c["latency_us"]["max"] > 4_000
    assert 4 <= c["late"] <= 6
    assert c["late_sent"] < c["late"]  # from the send, fewer of them miss


def test_a_slow_server_is_not_hidden_by_a_full_client_queue() -> None:
    """Capacity 1 (HTTP without pipelining), service 2 ms, one request per ms: request i
    finishes at (i + 1) * 2 ms and was due at i ms, so its latency is (i + 2) ms.  A closed
    loop would report 2 ms for every request."""
    ft = FakeTime()
    loop = open_loop(ft)
    ch = channel(ft, loop, 2 * MS, capacity=1)
    start = ft.now + MS
    drive(loop, [ch], ArrivalSchedule(start, 1000.0, 0.02))
    lat = loop.recorder.report(0.02)["latency_us"]
    assert lat["n"] == 20
    assert lat["max"] == pytest.approx(21_000, rel=2e-3)
    assert lat["p50"] == pytest.approx(11_000, rel=2e-3)


def test_connections_are_used_round_robin_when_they_have_room() -> None:
    ft = FakeTime()
    loop = open_loop(ft)
    chans = [channel(ft, loop, 10 * US, capacity=1) for _ in range(3)]
    drive(loop, chans, ArrivalSchedule(ft.now, 1000.0, 0.03))
    assert [len(c.sent_at) for c in chans] == [10, 10, 10]


def test_when_behind_it_yields_every_burst() -> None:
    ft = FakeTime()
    loop = open_loop(ft, burst=16)
    ch = channel(ft, loop, 1 * US)
    start = ft.now
    ft.now += 10 * MS  # all 1000 requests are already due
    drive(loop, [ch], ArrivalSchedule(start, 1e6, 0.001))
    assert loop.recorder.report(1.0)["ok"] == 1000
    assert 1000 // 16 <= ch.flushes <= 1000 // 16 + 3


def test_replies_missing_at_the_drain_timeout_count_as_no_reply() -> None:
    ft = FakeTime()
    loop = open_loop(ft)
    ch = channel(ft, loop, 10_000 * MS)
    waited = drive(loop, [ch], ArrivalSchedule(ft.now, 1000.0, 0.01), drain_s=0.05)
    rep = loop.recorder.report(0.01)
    assert rep["statuses"] == {"no_reply": 10} and rep["ok"] == 0
    assert waited == pytest.approx(0.05, abs=0.002)
    assert loop.outstanding == 0


def test_it_aborts_when_every_connection_is_gone() -> None:
    ft = FakeTime()
    loop = open_loop(ft)
    ch = channel(ft, loop, 10 * US)
    ch.alive = False
    drive(loop, [ch], ArrivalSchedule(ft.now, 1000.0, 1.0), drain_s=0.01)
    assert loop.aborted is not None
    assert loop.sent < 5


class LoopChannel:
    """Answers each flushed request after ``service_ns`` of fake time, from the event loop."""

    def __init__(self, ft: FakeTime, service_ns: int) -> None:
        self.ft = ft
        self.service_ns = service_ns
        self.alive = True
        self.capacity = 1
        self.sink: Any = None
        self.buf: list[tuple[int, int, int]] = []
        self.sent = 0

    @property
    def inflight(self) -> int:
        return len(self.buf)

    def submit(self, cls: int, tpl: int, intended_ns: int, sent_ns: int) -> None:
        assert intended_ns == sent_ns and not self.buf
        self.buf.append((cls, intended_ns, sent_ns))

    def flush(self) -> None:
        self.sent += 1
        asyncio.get_running_loop().call_soon(self._answer)

    def _answer(self) -> None:
        cls, intended, sent = self.buf.pop()
        self.ft.now += self.service_ns
        self.sink(self, cls, 0, intended, sent, self.ft.now)

    def abandon(self) -> list[tuple[int, int, int]]:
        out, self.buf = self.buf, []
        return out


def test_sequential_sends_the_next_request_from_the_reply_and_skips_the_warmup() -> None:
    ft = FakeTime()
    mix = parse_mix("bulk")
    seq = Sequential(mix, 4, Recorder(mix), clock=ft.clock)
    ch = LoopChannel(ft, 70 * US)
    ch.sink = seq.sink
    asyncio.run(seq.run(ch, 200, warmup=20))
    rep = seq.recorder.report(1.0)
    assert ch.sent == 220
    assert rep["sent"] == 200 and rep["ok"] == 200
    assert rep["latency_us"]["p50"] == pytest.approx(70, rel=1e-2)
    assert rep["latency_us"]["max"] == pytest.approx(70, rel=1e-2)


def test_prime_makes_one_unrecorded_round_trip_per_connection() -> None:
    ft = FakeTime()
    loop = open_loop(ft)
    loop.recorder.record_from_ns = 1 << 62
    chans = [channel(ft, loop, 30 * US, capacity=1) for _ in range(3)]
    asyncio.run(loop.prime(chans))
    assert [len(c.sent_at) for c in chans] == [1, 1, 1]
    assert loop.outstanding == 0 and loop.recorder.completed == 3
    assert loop.recorder.report(1.0)["sent"] == 0
