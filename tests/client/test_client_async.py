"""The asyncio client against scriptable in-test servers: pipelining with out-of-order
replies, failover, draining, hedging and errors.  Each test runs its own event loop; waits on
the servers' condition variables run in a worker thread so the loop keeps turning."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from fakeserver import FakeServer

from tailguard.client import (
    AsyncClient,
    Balance,
    ConnectionLost,
    HedgePolicy,
    InvalidRequest,
    Timeout,
    Unavailable,
)
from tailguard.schema.wire import Notice, Status

Make = Callable[..., FakeServer]
HEDGE = HedgePolicy(initial_delay_s=0.002, min_delay_s=0.001)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on a fresh loop, with a safety limit far above any test's needs."""
    return asyncio.run(asyncio.wait_for(coro, 15.0))


def test_pipelining_matches_out_of_order_replies_by_id(make_server: Make) -> None:
    s = make_server()
    s.script = s.hold
    n = 200

    async def main() -> None:
        async with AsyncClient(s.address, pool_size=1, timeout_s=10.0) as c:
            calls = [asyncio.ensure_future(c.predict(k)) for k in range(n)]
            await asyncio.to_thread(s.wait_held, n)  # all 200 in flight on one connection
            s.release(reverse=True)  # answered last-sent first
            results = await asyncio.gather(*calls)
            assert [r.outputs["p"] for r in results] == [float(k) for k in range(n)]
            assert c.statistics()["connections_opened"] == 1

    run(main())
    assert len(s.conns) == 1
    assert len({r.id for r in s.requests}) == n


def test_concurrent_first_calls_share_one_connect(make_server: Make) -> None:
    s = make_server()

    async def main() -> None:
        async with AsyncClient(s.address, pool_size=1) as c:
            results = await asyncio.gather(*(c.predict(k) for k in range(20)))
            assert [r.outputs["p"] for r in results] == [float(k) for k in range(20)]

    run(main())
    assert len(s.conns) == 1


def test_busy_connection_grows_the_pool_in_the_background(make_server: Make) -> None:
    s = make_server()
    s.script = s.hold

    async def main() -> None:
        async with AsyncClient(s.address, pool_size=2, timeout_s=10.0) as c:
            first = asyncio.ensure_future(c.predict(1))
            await asyncio.to_thread(s.wait_held, 1)
            second = asyncio.ensure_future(c.predict(2))  # pipelined; a second connection opens
            await asyncio.to_thread(s.wait_held, 2)
            s.script = s.echo
            s.release()
            await asyncio.gather(first, second)
            assert (await c.predict(3)).outputs["p"] == 3.0
            assert c.statistics()["connections"] == {f"tcp://{s.address}": 2}

    run(main())


def test_batch(make_server: Make) -> None:
    s = make_server()

    async def main() -> None:
        async with AsyncClient(s.address) as c:
            r = await c.predict_batch([1, 2], {"price": [1.0, 2.0], "size": [1.0, 1.0]})
            assert r.outputs["p"].tolist() == [1.0, 2.0]

    run(main())


def test_failover_when_the_first_endpoint_refuses_connections(make_server: Make, refused: str) -> None:
    b = make_server()

    async def main() -> None:
        async with AsyncClient([refused, b.address], balance=Balance.IN_ORDER, health_interval_s=0) as c:
            r = await c.predict(1)
            assert r.endpoint == f"tcp://{b.address}"
            stats = c.statistics()
            assert stats["failovers"] == 1 and stats["endpoints"][f"tcp://{refused}"] == "down"

    run(main())


def test_unavailable_when_nothing_answers(refused: str) -> None:
    async def main() -> None:
        async with AsyncClient(refused, health_interval_s=0) as c:
            with pytest.raises(Unavailable):
                await c.predict(1)

    run(main())


def test_server_death_retries_idempotent_and_raises_for_non_idempotent(make_server: Make) -> None:
    a, b = make_server(), make_server()
    a.script = a.die

    async def main() -> None:
        async with AsyncClient([a.address, b.address], balance=Balance.IN_ORDER, health_interval_s=0) as c:
            r = await c.predict(1)
            assert r.endpoint == f"tcp://{b.address}" and r.attempts == 2
            assert c.statistics()["retries"] == 1

    run(main())

    a2, b2 = make_server(), make_server()
    a2.script = a2.die

    async def non_idempotent() -> None:
        async with AsyncClient([a2.address, b2.address], balance=Balance.IN_ORDER, health_interval_s=0) as c:
            with pytest.raises(ConnectionLost):
                await c.predict(1, idempotent=False)

    run(non_idempotent())
    assert b2.requests == []


def test_every_pipelined_request_fails_over_when_the_connection_drops(make_server: Make) -> None:
    a, b = make_server(), make_server()
    a.script = a.hold

    async def main() -> None:
        async with AsyncClient([a.address, b.address], balance=Balance.IN_ORDER, health_interval_s=0,
                               timeout_s=10.0) as c:
            calls = [asyncio.ensure_future(c.predict(k)) for k in range(10)]
            await asyncio.to_thread(a.wait_held, 10)
            a.die(a.conns[0], a.requests[0])
            results = await asyncio.gather(*calls)
            assert {r.endpoint for r in results} == {f"tcp://{b.address}"}
            assert [r.outputs["p"] for r in results] == [float(k) for k in range(10)]

    run(main())


def test_draining_notice_moves_traffic(make_server: Make) -> None:
    a, b = make_server(), make_server()
    a.script = lambda conn, req: conn.reply(req, Notice("draining"))

    async def main() -> None:
        async with AsyncClient([a.address, b.address], balance=Balance.IN_ORDER, health_interval_s=0) as c:
            assert (await c.predict(1)).endpoint == f"tcp://{a.address}"
            assert (await c.predict(2)).endpoint == f"tcp://{b.address}"
            assert c.statistics()["endpoints"][f"tcp://{a.address}"] == "draining"

    run(main())
    assert len(a.requests) == 1


def test_hedge_wins_on_the_other_endpoint_and_the_loser_is_counted(make_server: Make) -> None:
    a, b = make_server(), make_server()
    a.script = a.hold

    async def main() -> None:
        async with AsyncClient([a.address, b.address], balance=Balance.IN_ORDER, hedge=HEDGE,
                               health_interval_s=0) as c:
            r = await c.predict(4)
            assert (r.hedged, r.hedge_won, r.endpoint) == (True, True, f"tcp://{b.address}")
            a.script = a.echo
            a.release()  # the loser's reply precedes the next reply on that connection
            # Not idempotent, so never hedged, however slow a loaded machine is.
            assert (await c.predict(5, idempotent=False)).endpoint == f"tcp://{a.address}"
            stats = c.statistics()
            assert (stats["hedges_sent"], stats["hedge_wins"], stats["losers_ignored"]) == (1, 1, 1)

    run(main())


def test_timeout_then_late_reply_is_ignored(make_server: Make) -> None:
    s = make_server()
    s.script = s.hold

    async def main() -> None:
        async with AsyncClient(s.address, health_interval_s=0) as c:
            await c.connect()
            with pytest.raises(Timeout):
                await c.predict(1, timeout_s=0.02)
            await asyncio.to_thread(s.wait_held, 1)
            s.script = s.echo
            s.release()
            assert (await c.predict(2)).outputs["p"] == 2.0
            stats = c.statistics()
            assert stats["late_ignored"] == 1 and stats["errors"] == {"timeout": 1}

    run(main())


def test_error_status_maps_to_exception(make_server: Make) -> None:
    s = make_server()
    s.script = s.reject(Status.UNKNOWN_PRIORITY, field="priority")

    async def main() -> None:
        async with AsyncClient(s.address) as c:
            with pytest.raises(InvalidRequest) as info:
                await c.predict(1, priority="nope")
            assert info.value.code == "unknown_priority" and info.value.field == "priority"

    run(main())


def test_cancelled_call_abandons_its_request(make_server: Make) -> None:
    s = make_server()
    s.script = s.hold

    async def main() -> None:
        async with AsyncClient(s.address, timeout_s=10.0) as c:
            call = asyncio.ensure_future(c.predict(1))
            await asyncio.to_thread(s.wait_held, 1)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert c.statistics()["in_flight"] == {f"tcp://{s.address}": 0}

    run(main())


def test_one_lost_connection_does_not_lengthen_the_backoff_per_request(make_server: Make) -> None:
    a, b = make_server(), make_server()
    a.script = a.hold

    async def main() -> None:
        async with AsyncClient([a.address, b.address], balance=Balance.IN_ORDER, health_interval_s=0,
                               timeout_s=10.0) as c:
            calls = [asyncio.ensure_future(c.predict(k)) for k in range(10)]
            await asyncio.to_thread(a.wait_held, 10)
            a.die(a.conns[0], a.requests[0])
            await asyncio.gather(*calls)
            assert c._core.health.slots[0].failures == 1

    run(main())


def test_closed_client_refuses_calls(make_server: Make) -> None:
    s = make_server()

    async def main() -> None:
        c = AsyncClient(s.address)
        await c.aclose()
        with pytest.raises(Unavailable, match="closed"):
            await c.predict(1)

    run(main())


def test_down_endpoint_is_readmitted_by_a_health_check(make_server: Make) -> None:
    a, b = make_server(), make_server()
    a.script = a.die
    port = int(a.address.rpartition(":")[2])

    async def main() -> None:
        # No backoff, so the endpoint is due for a check at once (nothing to wait for).
        async with AsyncClient([a.address, b.address], balance=Balance.IN_ORDER, health_interval_s=0,
                               down_backoff_s=0.0) as c:
            await c.predict(1)
            assert c.statistics()["endpoints"][f"tcp://{a.address}"] == "down"
            a2 = make_server(port=port)  # restarted at the same address
            assert (await c.check_health())[f"tcp://{a.address}"] == "up"
            assert a2.pings == 1
            assert (await c.predict(2)).endpoint == f"tcp://{a.address}"
            assert len(a2.conns) == 1  # the checked connection carried the call

    run(main())


def test_warm_connections_carry_a_retry_when_one_dies_with_its_worker(make_server: Make) -> None:
    s = make_server()
    died: list[object] = []
    served_on: list[object] = []

    def first_dies(conn: Any, req: Any) -> None:  # one worker process dies, the listener stays
        if not died:
            died.append(conn)
            conn.close()
        else:
            served_on.append(conn)
            conn.reply(req)

    s.script = first_dies

    async def main() -> None:
        async with AsyncClient(s.address, warm_connections=3, health_interval_s=0, timeout_s=5.0) as c:
            assert await c.connect() == 1
            assert c.statistics()["connections_opened"] == 3  # opened up front, not on demand
            r = await c.predict(7)
            assert r.outputs["p"] == 7.0 and r.attempts == 2
            # The re-send went out at once on one of the other warm connections (not on a new
            # one); a replacement is opened aside to keep three open.
            assert served_on[0] in s.conns[:3] and served_on[0] is not died[0]
            for _ in range(200):
                if c.statistics()["connections"][f"tcp://{s.address}"] == 3:
                    break
                await asyncio.sleep(0.01)
            assert c.statistics()["connections"][f"tcp://{s.address}"] == 3
            assert c.statistics()["connections_opened"] == 4

    run(main())
    assert len(died) == 1


def test_warm_connections_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="warm_connections"):
        AsyncClient("127.0.0.1:1", warm_connections=0)
