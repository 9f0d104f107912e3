"""Client load balancing: power of two choices on a peak-EWMA latency estimate times in-flight
copies, outlier ejection on consecutive failures, readmission, ``endpoint_stats()``.

Deterministic: a ``FakeClock`` that the fake servers advance by their "service time" before
replying, and a seeded (or scripted) random source.  The integration test at the end kills
a real ``tailguard serve`` process under load."""

from __future__ import annotations

import asyncio
import inspect
import random
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from fakeserver import WAIT_S, FakeConn, FakeServer

from tailguard.client import (
    AsyncClient,
    Balance,
    Client,
    ClientError,
    EndpointState,
    EndpointStats,
    HedgePolicy,
    InvalidRequest,
    ServerFailed,
    Timeout,
)
from tailguard.client._endpoint import Endpoint
from tailguard.client._health import Health
from tailguard.client._load import Load
from tailguard.schema.wire import Request, Status
from tailguard.testing import FakeClock

Make = Callable[..., FakeServer]
MS = 1_000_000
UP, DOWN = EndpointState.UP, EndpointState.DOWN


class FirstDraw(random.Random):
    """A scripted random source: P2C always draws endpoints 0 and 1, and on a tie keeps 0."""

    def random(self) -> float:
        return 0.0


def health(n: int, clock: FakeClock, **kwargs: Any) -> Health:
    kwargs.setdefault("rng", random.Random(1))
    return Health([Endpoint.parse(f"h{i}:1") for i in range(n)], clock.now_ns, balance=Balance.P2C, **kwargs)


def serve(h: Health, clock: FakeClock, latency_ms: dict[int, float], calls: int) -> list[int]:
    """``calls`` sequential requests through ``h``: each endpoint answers after its latency."""
    picks = []
    for _ in range(calls):
        slot = h.choose()
        assert slot is not None
        h.sent(slot)
        clock.advance(latency_ms[slot.index] / 1e3)
        h.replied(slot, 0, round(latency_ms[slot.index] * MS), clock.now_ns())
        picks.append(slot.index)
    return picks


def slow_then_echo(clock: FakeClock, server: FakeServer, ms: float) -> Callable[[FakeConn, Request], None]:
    """A script that spends ``ms`` of fake time, then answers (``server.ms`` may change it)."""
    server.ms = ms  # type: ignore[attr-defined]

    def script(conn: FakeConn, req: Request) -> None:
        clock.advance(server.ms / 1e3)  # type: ignore[attr-defined]
        conn.reply(req)

    return script


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 15.0))


# -- the latency estimate ------------------------------------------------------------------------


def test_peak_ewma_jumps_up_at_once_and_decays_toward_faster_replies() -> None:
    load, decay = Load(), 1e9
    load.observe(1 * MS, 1_000 * MS, decay)
    assert load.ewma_ns == 1 * MS  # the first observation is the estimate
    load.observe(9 * MS, 1_001 * MS, decay)
    assert load.ewma_ns == 9 * MS  # a slow reply replaces it at once
    load.observe(1 * MS, 1_002 * MS, decay)
    assert 8 * MS < load.ewma_ns < 9 * MS  # a fast one 1 ms later barely pulls it down
    load.observe(1 * MS, 3_002 * MS, decay)
    assert 1 * MS < load.ewma_ns < 1.2 * MS  # 2 s (two time constants) later it is mostly forgotten


def test_estimate_decays_toward_zero_while_no_reply_is_observed() -> None:
    load = Load()
    load.observe(8 * MS, 1_000 * MS, 1e9)
    assert load.estimate_ns(1_000 * MS, 1e9) == 8 * MS
    assert load.estimate_ns(1_000 * MS + 693 * MS, 1e9) == pytest.approx(4 * MS, rel=1e-3)


def test_inflight_never_goes_negative() -> None:
    load = Load()
    load.sent()
    load.done()
    load.done()  # e.g. an increment lost to a race: clamped, not -1
    assert load.inflight == 0


# -- choosing -------------------------------------------------------------------------------------


def test_slow_endpoint_gets_less_traffic() -> None:
    clock = FakeClock()
    h = health(3, clock)
    picks = serve(h, clock, {0: 0.1, 1: 5.0, 2: 0.2}, 600)
    assert picks.count(1) < 10 < picks.count(2) < picks.count(0)
    stats = h.endpoint_stats()
    assert stats[1].ewma_us is not None and stats[1].ewma_us > 1000
    assert [s.requests for s in stats] == [picks.count(i) for i in range(3)]


def test_in_flight_heavy_endpoint_is_avoided() -> None:
    clock = FakeClock()
    h = health(3, clock)
    for s in h.slots:  # all observed equally fast
        h.sent(s)
        h.replied(s, 0, MS, clock.now_ns())
    for _ in range(10):
        h.sent(h.slots[1])  # ten copies still out on endpoint 1
    picks = [h.choose().index for _ in range(300)]  # type: ignore[union-attr]
    assert picks.count(1) == 0 and picks.count(0) > 100 and picks.count(2) > 100


def test_seeded_choices_are_reproducible() -> None:
    def picks(seed: int) -> list[int]:
        clock = FakeClock()
        return serve(health(4, clock, rng=random.Random(seed)), clock, {0: 1, 1: 1, 2: 1, 3: 1}, 50)

    assert picks(5) == picks(5)
    assert picks(5) != picks(6)


def test_new_and_readmitted_endpoints_start_at_the_neutral_cost() -> None:
    clock = FakeClock()
    h = health(2, clock, rng=FirstDraw())
    serve(h, clock, {0: 1.0, 1: 3.0}, 2)  # both observed: 1 ms and 3 ms
    h.mark_down(h.slots[0], "test")
    h.mark_up(h.slots[0])
    # Unobserved again, it costs the mean of the others' estimates (3 ms), not 0 (a flood)
    # nor its old record: it gets traffic at once, then its own estimate decides.
    assert h.endpoint_stats()[0].ewma_us is None
    assert h._cheaper(h.slots[0], h.slots[1], clock.now_ns()) is h.slots[0]  # tie: the first drawn
    for _ in range(2):
        h.sent(h.slots[0])
    assert h.choose() is h.slots[1]  # two in flight at the neutral 3 ms cost more than idle 3 ms


def test_p2c_skips_down_and_busy_endpoints() -> None:
    clock = FakeClock()
    h = health(3, clock)
    h.mark_down(h.slots[0], "test")
    h.mark_busy(h.slots[1], 10 * MS)
    assert {h.choose().index for _ in range(50)} == {2}  # type: ignore[union-attr]
    assert h.choose(exclude={2}) is h.slots[1]  # busy is only a preference
    assert h.choose(exclude={1, 2}) is None


# -- ejection -----------------------------------------------------------------------------------


def test_ejected_after_n_consecutive_failures_of_any_kind() -> None:
    clock = FakeClock()
    h = health(2, clock, eject_after=3)
    a = h.slots[0]
    h.replied(a, int(Status.INTERNAL), MS, clock.now_ns())
    h.lost(a)
    assert a.state is UP and a.load.streak == 2
    h.abandoned(a, 50 * MS, clock.now_ns(), timed_out=True, lost_race=False)
    assert a.state is DOWN and a.reason.startswith("ejected: 3 consecutive")
    assert h.endpoint_stats()[0].failures == 3


def test_request_errors_rejections_and_lost_races_are_not_failures() -> None:
    clock = FakeClock()
    h = health(2, clock, eject_after=2)
    a = h.slots[0]
    for _ in range(5):
        h.replied(a, int(Status.INVALID_REQUEST), MS, clock.now_ns())
        h.replied(a, int(Status.QUEUE_FULL), MS, clock.now_ns())
        h.abandoned(a, MS, clock.now_ns(), timed_out=False, lost_race=True)
        h.lost(a, blame=False)
    assert a.state is UP and a.load.failures == 0


def test_a_good_reply_ends_the_streak() -> None:
    clock = FakeClock()
    h = health(2, clock, eject_after=2)
    a = h.slots[0]
    for _ in range(5):
        h.replied(a, int(Status.MODEL_ERROR), MS, clock.now_ns())
        h.replied(a, 0, MS, clock.now_ns())
    assert a.state is UP and a.load.failures == 5


def test_the_last_up_endpoint_is_never_ejected() -> None:
    clock = FakeClock()
    h = health(2, clock, eject_after=1)
    a, b = h.slots
    h.lost(a)
    assert a.state is DOWN
    for _ in range(10):
        h.lost(b)
    assert b.state is UP and b.load.streak == 10


def test_readmitted_outlier_is_on_probation() -> None:
    clock = FakeClock()
    h = health(2, clock, eject_after=3, down_backoff_s=0.1)
    a = h.slots[0]
    for _ in range(3):
        h.lost(a)
    assert h.next_due_s() == pytest.approx(0.1)
    h.mark_up(a)
    h.lost(a)  # one failure is enough on probation, and the backoff doubles
    assert a.state is DOWN and h.next_due_s() == pytest.approx(0.2)
    h.mark_up(a)
    h.replied(a, 0, MS, clock.now_ns())  # its first good reply clears the record
    for _ in range(2):
        h.lost(a)
    assert a.state is UP


def test_eject_after_zero_never_ejects() -> None:
    clock = FakeClock()
    h = health(2, clock, eject_after=0)
    for _ in range(20):
        h.lost(h.slots[0])
    assert h.slots[0].state is UP


# -- the blocking client --------------------------------------------------------------------------


def test_both_clients_balance_with_p2c_by_default() -> None:
    for cls in (Client, AsyncClient):
        params = inspect.signature(cls.__init__).parameters
        assert params["balance"].default is Balance.P2C


def test_sync_client_sends_less_traffic_to_the_slow_endpoint_and_follows_a_change(make_server: Make) -> None:
    clock = FakeClock()
    a, b = make_server(), make_server()
    a.script = slow_then_echo(clock, a, 5.0)
    b.script = slow_then_echo(clock, b, 0.1)
    with Client([a.address, b.address], clock=clock, rng=random.Random(3), health_interval_s=0) as c:
        for k in range(200):
            c.predict(k)
        assert len(a.requests) < 5 and len(b.requests) > 195
        stats = c.endpoint_stats()
        assert isinstance(stats[0], EndpointStats)
        assert stats[0].endpoint == f"tcp://{a.address}" and stats[0].state is UP
        assert stats[0].ewma_us is not None and stats[1].ewma_us is not None
        assert stats[0].ewma_us > 10 * stats[1].ewma_us
        assert (stats[1].requests, stats[1].inflight, stats[1].failures) == (len(b.requests), 0, 0)
        a.ms, b.ms = 0.1, 5.0  # type: ignore[attr-defined]
        before = len(a.requests)
        for k in range(200):
            c.predict(k)
        assert len(a.requests) - before > 150


def test_sync_client_avoids_the_endpoint_with_copies_in_flight(make_server: Make) -> None:
    clock = FakeClock()
    a, b = make_server(), make_server()
    a.script = a.hold
    with Client([a.address, b.address], clock=clock, rng=FirstDraw(), timeout_s=10.0,
                health_interval_s=0) as c:
        held = threading.Thread(target=c.predict, args=(0,))
        held.start()  # a tie: the first drawn, a, which holds it
        a.wait_held(1)
        assert c.endpoint_stats()[0].inflight == 1
        for k in range(1, 21):
            assert c.predict(k).endpoint == f"tcp://{b.address}"
        a.script = a.echo
        a.release()
        held.join(WAIT_S)
        assert c.endpoint_stats()[0].inflight == 0
        assert c.predict(99).endpoint == f"tcp://{a.address}"  # a tie again


def test_sync_client_ejects_a_failing_endpoint_and_readmits_it_after_a_health_check(
    make_server: Make,
) -> None:
    clock = FakeClock()
    a, b = make_server(), make_server()
    a.script = a.reject(Status.INTERNAL)
    with Client([a.address, b.address], clock=clock, rng=FirstDraw(), eject_after=3, down_backoff_s=0.1,
                health_interval_s=0) as c:
        for k in range(10):
            assert c.predict(k).endpoint == f"tcp://{b.address}"  # each failure retried on b
        assert len(a.requests) == 3
        ea = c.endpoint_stats()[0]
        assert (ea.state, ea.failures, ea.requests) == (DOWN, 3, 3)
        assert c.statistics()["retries"] == 3
        a.script = a.echo
        assert c.check_health()[f"tcp://{a.address}"] == "down"  # resting
        clock.advance(0.1)
        assert c.check_health()[f"tcp://{a.address}"] == "up" and a.pings == 1
        assert c.predict(99).endpoint == f"tcp://{a.address}"  # neutral cost: it gets traffic
        assert c.endpoint_stats()[0].consecutive_failures == 0


def test_sync_client_does_not_eject_on_request_errors(make_server: Make) -> None:
    a, b = make_server(), make_server()
    a.script = a.reject(Status.INVALID_REQUEST)
    with Client([a.address, b.address], rng=FirstDraw(), eject_after=2, health_interval_s=0) as c:
        for k in range(5):
            with pytest.raises(InvalidRequest):
                c.predict(k)
        assert c.endpoint_stats()[0].state is UP and len(a.requests) == 5


def test_sync_client_never_ejects_the_last_endpoint(make_server: Make) -> None:
    a, b = make_server(), make_server()
    a.script = a.reject(Status.MODEL_ERROR)
    b.script = b.reject(Status.MODEL_ERROR)
    with Client([a.address, b.address], rng=random.Random(2), eject_after=2, max_retries=0,
                health_interval_s=0) as c:
        for k in range(12):
            with pytest.raises(ServerFailed):
                c.predict(k)
        states = sorted(s.state.value for s in c.endpoint_stats())
        assert states == ["down", "up"]
        assert sum(s.failures for s in c.endpoint_stats()) == 12


def test_sync_client_ejects_an_endpoint_that_keeps_timing_out(make_server: Make) -> None:
    # The real clock: a timeout is a real wait (20 ms), as in the other timeout tests.
    a, b = make_server(), make_server()
    a.script = a.hold
    with Client([a.address, b.address], balance=Balance.IN_ORDER, eject_after=2, max_retries=0,
                health_interval_s=0) as c:
        c.connect()
        for k in range(2):
            with pytest.raises(Timeout):
                c.predict(k, timeout_s=0.02)
        assert c.endpoint_stats()[0].state is DOWN
        assert c.endpoint_stats()[0].ewma_us is not None  # the timed-out copies taught it "slow"
        assert c.predict(3).endpoint == f"tcp://{b.address}"
        a.release()


def test_sync_in_flight_counts_return_to_zero_after_concurrent_calls(make_server: Make) -> None:
    a, b = make_server(), make_server()
    with Client([a.address, b.address], pool_size=4, timeout_s=10.0, rng=random.Random(8)) as c:
        def work(base: int) -> None:
            for k in range(base, base + 50):
                c.predict(k)

        threads = [threading.Thread(target=work, args=(i * 1000,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT_S)
        stats = c.endpoint_stats()
    assert [s.inflight for s in stats] == [0, 0]
    assert sum(s.requests for s in stats) == 400 == len(a.requests) + len(b.requests)
    assert min(s.requests for s in stats) > 50  # both took a share


def test_a_hedge_loser_leaves_flight_and_teaches_the_estimate(make_server: Make) -> None:
    a, b = make_server(), make_server()
    a.script = a.hold
    hedge = HedgePolicy(initial_delay_s=0.002, min_delay_s=0.001)
    with Client([a.address, b.address], rng=FirstDraw(), hedge=hedge, health_interval_s=0) as c:
        r = c.predict(1)  # to a (a tie), hedged to b after 2 ms, which wins
        assert r.hedge_won and r.endpoint == f"tcp://{b.address}"
        sa, sb = c.endpoint_stats()
        assert (sa.inflight, sa.requests, sa.failures) == (0, 1, 0)
        assert sa.ewma_us is not None and sa.ewma_us >= 1000  # at least the hedge delay
        assert sb.requests == 1
        a.release()


# -- the asyncio client ---------------------------------------------------------------------------


def test_async_client_avoids_the_endpoint_with_copies_in_flight(make_server: Make) -> None:
    a, b = make_server(), make_server()
    a.script = a.hold

    async def main() -> None:
        async with AsyncClient([a.address, b.address], rng=FirstDraw(), timeout_s=10.0,
                               health_interval_s=0) as c:
            held = asyncio.ensure_future(c.predict(0))
            await asyncio.to_thread(a.wait_held, 1)
            assert c.endpoint_stats()[0].inflight == 1
            for k in range(1, 21):
                assert (await c.predict(k)).endpoint == f"tcp://{b.address}"
            a.script = a.echo
            a.release()
            await held
            assert c.endpoint_stats()[0].inflight == 0

    run(main())
    assert len(a.requests) == 1


def test_async_client_ejects_after_n_failures_and_never_the_last(make_server: Make) -> None:
    a, b = make_server(), make_server()
    a.script = a.reject(Status.INTERNAL)

    async def main() -> None:
        async with AsyncClient([a.address, b.address], rng=FirstDraw(), eject_after=3,
                               health_interval_s=0) as c:
            for k in range(10):
                assert (await c.predict(k)).endpoint == f"tcp://{b.address}"
            assert c.endpoint_stats()[0].state is DOWN and len(a.requests) == 3
            b.script = b.reject(Status.INTERNAL)
            for k in range(5):
                with pytest.raises(ServerFailed):
                    await c.predict(k)
            assert c.endpoint_stats()[1].state is UP  # the last one up stays up

    run(main())


def test_async_client_counts_a_cancelled_copy_out_of_flight(make_server: Make) -> None:
    s = make_server()
    s.script = s.hold

    async def main() -> None:
        async with AsyncClient(s.address, timeout_s=10.0, eject_after=1) as c:
            call = asyncio.ensure_future(c.predict(1))
            await asyncio.to_thread(s.wait_held, 1)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            (st,) = c.endpoint_stats()
            assert (st.inflight, st.requests, st.failures, st.state) == (0, 1, 0, UP)

    run(main())


# -- real servers -----------------------------------------------------------------------------------


def test_no_idempotent_request_is_lost_when_a_replica_is_killed_under_load(toy_dir: Path) -> None:
    """Two replicas under load from four threads; one is killed (SIGKILL) with requests in
    flight: every call still answers (retried on the other), the dead one is out of rotation;
    restarted at the same address, a health check readmits it and traffic comes back."""
    process = pytest.importorskip("tailguard.serve.process")
    ctx = {"price": 104.5, "size": 3.0}
    with process.ServerProcess.start(toy_dir, "--tcp", "127.0.0.1:0") as a, \
         process.ServerProcess.start(toy_dir, "--tcp", "127.0.0.1:0") as b, \
         Client([a.tcp, b.tcp], timeout_s=10.0, health_interval_s=0, down_backoff_s=0.0,
                rng=random.Random(4)) as c:
        a_ep, b_ep = f"tcp://{a.tcp}", f"tcp://{b.tcp}"
        c.connect()
        cond = threading.Condition()
        served: list[str] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def work(base: int) -> None:
            k = base
            while not stop.is_set():
                try:
                    r = c.predict(f"k{k}", ctx, idempotent=True)
                except ClientError as exc:  # a lost request: reported below
                    errors.append(exc)
                    r = None
                with cond:
                    if r is not None:
                        served.append(r.endpoint)
                    cond.notify_all()
                k += 1

        def wait_for(pred: Callable[[], bool]) -> None:
            with cond:  # 60 s: a safety limit for a stuck test, never reached when it is right
                assert cond.wait_for(lambda: pred() or bool(errors), 60), len(served)

        threads = [threading.Thread(target=work, args=(i * 100_000,)) for i in range(4)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(served) >= 200)
            a.kill()  # SIGKILL, with requests in flight on its connections
            a.wait(10)
            with cond:
                at_kill = len(served)
            wait_for(lambda: len(served) >= at_kill + 300)
            with cond:
                after_kill = list(served[at_kill:])
            assert c.endpoint_stats()[0].state is DOWN
            with process.ServerProcess.start(toy_dir, "--tcp", a.tcp) as a2:  # restarted, same address
                assert c.check_health()[a_ep] == "up"
                with cond:
                    readmitted_at = len(served)
                wait_for(lambda: a_ep in served[readmitted_at:])
                stop.set()
                for t in threads:
                    t.join(WAIT_S)
                assert a2.proc.poll() is None
        finally:
            stop.set()
            for t in threads:
                t.join(WAIT_S)
        assert errors == []
        assert a_ep in served[:at_kill] and b_ep in served[:at_kill]
        assert set(after_kill[50:]) == {b_ep}  # the first few may have been answered before the kill
        assert c.statistics()["errors"] == {}
