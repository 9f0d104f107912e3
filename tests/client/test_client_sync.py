"""The blocking client against scriptable in-test servers: pooling, failover, draining,
hedging, error mapping and health checks.  No sleeps: servers hold requests until released
and tests wait on the servers' condition variables."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from fakeserver import FakeConn, FakeServer

from tailguard.client import (
    Balance,
    Client,
    ConnectionLost,
    HedgePolicy,
    InvalidRequest,
    Rejected,
    ServerFailed,
    Timeout,
    Unavailable,
)
from tailguard.decision import Flag
from tailguard.schema.wire import Notice, Refused, Reply, Request, Status
from tailguard.testing import FakeClock

Make = Callable[..., FakeServer]
HEDGE = HedgePolicy(initial_delay_s=0.002, min_delay_s=0.001)


def test_predict_returns_outputs_rung_flags_and_timings(make_server: Make) -> None:
    s = make_server()
    with Client(s.address, clock=FakeClock()) as c:  # a still clock: the budget sent is the whole budget
        r = c.predict(7, {"price": 1.0, "size": 2.0}, priority="critical", budget_us=2000)
    assert r.outputs == {"p": 7.0}
    assert (r.rung, r.flags, r.status, r.model_version) == ("primary", Flag.NONE, Status.OK, "v1")
    assert r.timings_ns["server_total"] == 15
    assert r.endpoint == f"tcp://{s.address}"
    assert not r.hedged and r.attempts == 1
    req = s.requests[0]
    assert (req.priority, req.budget_us, req.context) == ("critical", 2000, {"price": 1.0, "size": 2.0})


def test_predict_batch_returns_per_row_arrays(make_server: Make) -> None:
    s = make_server()
    with Client(s.address) as c:
        r = c.predict_batch([1, 2, 3], {"price": [1.0, 2.0, 3.0], "size": 1.0})
    assert r.output("p").tolist() == [1.0, 2.0, 3.0]
    assert len(r) == 3 and r.rungs == ("primary",) * 3
    assert s.requests[0].batch


def test_unix_endpoint(make_server: Make, sock_path: str) -> None:
    make_server(unix_path=sock_path)
    with Client(f"unix://{sock_path}") as c:
        assert c.predict(3).outputs["p"] == 3.0
        assert c.welcome().outputs == ["p"]


def test_pool_reuses_one_connection_for_sequential_calls(make_server: Make) -> None:
    s = make_server()
    with Client(s.address) as c:
        for k in range(5):
            assert c.predict(k).outputs["p"] == k
        stats = c.statistics()
    assert len(s.conns) == 1
    assert stats["connections_opened"] == 1
    assert stats["requests"] == 5


def test_concurrent_threads_open_more_connections_and_keep_pool_size(make_server: Make) -> None:
    s = make_server()
    s.script = s.hold
    with Client(s.address, pool_size=2, timeout_s=10.0) as c:
        results: list[float] = []
        threads = [threading.Thread(target=lambda k=k: results.append(c.predict(k).outputs["p"]))
                   for k in range(3)]
        for t in threads:
            t.start()
        s.wait_held(3)  # three calls in flight at once: three connections
        s.release()
        for t in threads:
            t.join()
        assert sorted(results) == [0.0, 1.0, 2.0]
        assert len(s.conns) == 3
        assert c.statistics()["idle"] == {f"tcp://{s.address}": 2}


def test_failover_when_the_first_endpoint_refuses_connections(make_server: Make, refused: str) -> None:
    b = make_server()
    with Client([refused, b.address], balance=Balance.IN_ORDER, health_interval_s=0) as c:
        r = c.predict(1)
        stats = c.statistics()
    assert r.endpoint == f"tcp://{b.address}"
    assert stats["failovers"] == 1 and stats["connect_failures"] == 1 and stats["retries"] == 0
    assert stats["endpoints"][f"tcp://{refused}"] == "down"


def test_unavailable_when_no_endpoint_can_be_reached(refused: str) -> None:
    with Client(refused, health_interval_s=0) as c, pytest.raises(Unavailable) as info:
        c.predict(1)
    assert info.value.code == "unavailable"
    assert [e.code for e in info.value.errors] == ["connect_failed"]


def test_idempotent_request_is_retried_when_the_server_dies_with_it_in_flight(make_server: Make) -> None:
    a, b = make_server(), make_server()
    a.script = a.die
    with Client([a.address, b.address], balance=Balance.IN_ORDER, health_interval_s=0) as c:
        r = c.predict(5)
        stats = c.statistics()
    assert r.endpoint == f"tcp://{b.address}" and r.attempts == 2
    assert len(a.requests) == 1 and len(b.requests) == 1
    assert stats["retries"] == 1 and stats["failovers"] == 1


def test_non_idempotent_request_raises_when_the_server_dies_with_it_in_flight(make_server: Make) -> None:
    a, b = make_server(), make_server()
    a.script = a.die
    with Client([a.address, b.address], balance=Balance.IN_ORDER, health_interval_s=0) as c:
        with pytest.raises(ConnectionLost):
            c.predict(5, idempotent=False)
        assert c.statistics()["errors"] == {"connection_lost": 1}
    assert b.requests == []
    assert a.requests[0].idempotent is False


def test_retry_carries_only_the_budget_left(make_server: Make) -> None:
    clock = FakeClock()
    a, b = make_server(), make_server()

    def spend_then_die(conn: FakeConn, req: Request) -> None:
        clock.advance(ns=500_000)  # 0.5 ms pass before the server dies
        a.die(conn, req)

    a.script = spend_then_die
    with Client([a.address, b.address], balance=Balance.IN_ORDER, health_interval_s=0, clock=clock) as c:
        c.predict(1, budget_us=2000)
    assert a.requests[0].budget_us == 2000
    assert b.requests[0].budget_us == 1500


def test_draining_notice_moves_new_requests_to_another_endpoint(make_server: Make) -> None:
    a, b = make_server(), make_server()
    a.script = lambda conn, req: conn.reply(req, Notice("draining"))
    with Client([a.address, b.address], balance=Balance.IN_ORDER, health_interval_s=0) as c:
        assert c.predict(1).endpoint == f"tcp://{a.address}"  # sent before the notice: answered
        assert c.predict(2).endpoint == f"tcp://{b.address}"
        assert c.statistics()["endpoints"][f"tcp://{a.address}"] == "draining"
    assert len(a.requests) == 1


def test_draining_status_is_retried_elsewhere_even_when_not_idempotent(make_server: Make) -> None:
    a, b = make_server(), make_server()
    a.script = a.reject(Status.DRAINING)
    with Client([a.address, b.address], balance=Balance.IN_ORDER, health_interval_s=0) as c:
        r = c.predict(1, idempotent=False)  # DRAINING: the request was not executed
        assert r.endpoint == f"tcp://{b.address}"
        assert c.statistics()["endpoints"][f"tcp://{a.address}"] == "draining"


def test_hedge_goes_to_another_endpoint_when_the_first_is_slow_and_the_loser_is_counted(
    make_server: Make,
) -> None:
    a, b = make_server(), make_server()
    a.script = a.hold
    with Client([a.address, b.address], balance=Balance.IN_ORDER, hedge=HEDGE, health_interval_s=0) as c:
        r = c.predict(4)
        assert (r.hedged, r.hedge_won, r.endpoint) == (True, True, f"tcp://{b.address}")
        assert r.outputs == {"p": 4.0}
        # The slow copy's reply is written before the next request is even sent, so the
        # client reads (and discards) it before its next reply on that connection.
        a.script = a.echo
        a.release()
        # Not idempotent, so never hedged: however slow a loaded machine is, it goes to a only.
        assert c.predict(5, idempotent=False).endpoint == f"tcp://{a.address}"
        stats = c.statistics()
    assert stats["hedges_sent"] == 1 and stats["hedge_wins"] == 1 and stats["losers_ignored"] == 1
    assert len(a.conns) == 1  # the loser's connection went back to the pool and was reused


def test_no_hedge_when_the_reply_comes_before_the_delay(make_server: Make) -> None:
    a, b = make_server(), make_server()
    hedge = HedgePolicy(initial_delay_s=30.0)
    with Client([a.address, b.address], hedge=hedge, balance=Balance.IN_ORDER) as c:
        r = c.predict(1)
        assert not r.hedged and c.statistics()["hedges_sent"] == 0
    assert b.requests == []


def test_hedge_on_a_single_endpoint_uses_a_second_connection(make_server: Make) -> None:
    a = make_server()
    first = threading.Event()

    def hold_first(conn: FakeConn, req: Request) -> None:
        if first.is_set():
            conn.reply(req)
        else:
            first.set()
            a.hold(conn, req)

    a.script = hold_first
    with Client(a.address, hedge=HEDGE, health_interval_s=0) as c:
        r = c.predict(2)
    assert r.hedge_won and len(a.conns) == 2


def test_timeout_raises_and_the_late_reply_is_discarded_later(make_server: Make) -> None:
    s = make_server()
    s.script = s.hold
    with Client(s.address, health_interval_s=0) as c:
        c.connect()
        with pytest.raises(Timeout):
            c.predict(1, timeout_s=0.02)
        s.wait_held(1)
        s.script = s.echo
        s.release()
        assert c.predict(2).outputs["p"] == 2.0
        stats = c.statistics()
    assert stats["timeouts"] == 1 and stats["late_ignored"] == 1
    assert stats["errors"] == {"timeout": 1}


@pytest.mark.parametrize(
    ("status", "exc", "code"),
    [
        (Status.UNKNOWN_PRIORITY, InvalidRequest, "unknown_priority"),
        (Status.FEATURE_ERROR, InvalidRequest, "feature_error"),
        (Status.MODEL_ERROR, ServerFailed, "model_error"),
    ],
)
def test_error_statuses_map_to_exceptions(make_server: Make, status: Status, exc: type, code: str) -> None:
    s = make_server()
    s.script = s.reject(status, field="priority")
    with Client(s.address, max_retries=0) as c, pytest.raises(exc) as info:
        c.predict(1)
    assert (info.value.status, info.value.code, info.value.field) == (status, code, "priority")
    assert info.value.endpoint == f"tcp://{s.address}"


def test_invalid_request_is_not_retried(make_server: Make) -> None:
    a, b = make_server(), make_server()
    a.script = a.reject(Status.INVALID_REQUEST)
    with Client([a.address, b.address], balance=Balance.IN_ORDER) as c:
        with pytest.raises(InvalidRequest):
            c.predict(1)
        assert c.statistics()["retries"] == 0
    assert b.requests == []


def test_server_failure_is_retried_only_when_idempotent(make_server: Make) -> None:
    s = make_server()
    s.script = s.reject(Status.INTERNAL)
    with Client(s.address, max_retries=2) as c:
        with pytest.raises(ServerFailed):
            c.predict(1)
        assert len(s.requests) == 3  # one try and two retries on the only endpoint
        with pytest.raises(ServerFailed):
            c.predict(1, idempotent=False)
        assert len(s.requests) == 4
        assert c.statistics()["errors"] == {"internal": 2}


def test_rejection_is_retried_at_once_on_another_endpoint(make_server: Make) -> None:
    a, b = make_server(), make_server()
    a.script = a.reject(Status.QUEUE_FULL, retry_after_us=10_000_000)
    with Client([a.address, b.address], balance=Balance.IN_ORDER) as c:
        assert c.predict(1).endpoint == f"tcp://{b.address}"
        # a asked for 10 s of rest: the next call prefers b without asking a.
        assert c.predict(2).endpoint == f"tcp://{b.address}"
    assert len(a.requests) == 1


def test_rejection_with_retry_after_beyond_the_deadline_raises(make_server: Make) -> None:
    s = make_server()
    s.script = s.reject(Status.RATE_LIMITED, retry_after_us=5_000_000)
    with Client(s.address) as c, pytest.raises(Rejected) as info:
        c.predict(1, timeout_s=1.0)
    assert info.value.code == "rate_limited" and info.value.retry_after_s == 5.0
    assert len(s.requests) == 1


def test_handshake_refused_is_reported_inside_unavailable(make_server: Make) -> None:
    s = make_server(refuse=Refused(int(Status.UNSUPPORTED_VERSION), "no common version"))
    with Client(s.address, health_interval_s=0) as c, pytest.raises(Unavailable) as info:
        c.predict(1)
    (err,) = info.value.errors
    assert err.status is Status.UNSUPPORTED_VERSION and err.code == "connect_failed"


def test_oversize_request_is_refused_locally(make_server: Make) -> None:
    s = make_server(max_frame=256)
    with Client(s.address) as c, pytest.raises(InvalidRequest) as info:
        c.predict_batch(list(range(200)))
    assert info.value.status is Status.FRAME_TOO_LARGE
    assert s.requests == []


def test_connection_level_error_before_close_is_raised_and_the_endpoint_not_blamed(make_server: Make) -> None:
    s = make_server()

    def too_large(conn: FakeConn, req: Request) -> None:
        conn.send(Reply(0, int(Status.FRAME_TOO_LARGE), error="frame too large"))
        conn.close()

    s.script = too_large
    with Client(s.address, health_interval_s=0) as c:
        with pytest.raises(InvalidRequest) as info:
            c.predict(1)
        assert info.value.status is Status.FRAME_TOO_LARGE
        assert c.statistics()["endpoints"][f"tcp://{s.address}"] == "up"
    assert len(s.requests) == 1  # not retried


def test_bad_arguments_raise_invalid_request(make_server: Make) -> None:
    s = make_server()
    with Client(s.address) as c:
        with pytest.raises(InvalidRequest, match="budget_us"):
            c.predict(1, budget_us=0)
        with pytest.raises(InvalidRequest, match="cannot be encoded"):
            c.predict(object())


def test_down_endpoint_is_readmitted_after_backoff_and_a_ping(make_server: Make) -> None:
    clock = FakeClock()
    a, b = make_server(), make_server()
    a.script = a.die
    with Client([a.address, b.address], balance=Balance.IN_ORDER, clock=clock, health_interval_s=0,
                down_backoff_s=0.1) as c:
        c.predict(1)  # a dies: retried on b, a is down
        a2 = make_server(port=int(a.address.rpartition(":")[2]))  # restarted at the same address
        assert c.check_health()[f"tcp://{a.address}"] == "down"  # backoff not over: no check
        assert a2.pings == 0
        clock.advance(0.2)
        assert c.check_health()[f"tcp://{a.address}"] == "up"
        assert a2.pings == 1
        assert c.predict(2).endpoint == f"tcp://{a.address}"
    assert len(a2.conns) == 1  # the health check's connection went into the pool


def test_draining_endpoint_stays_out_while_its_pong_says_draining(make_server: Make) -> None:
    clock = FakeClock()
    a, b = make_server(), make_server()
    a.script = a.reject(Status.DRAINING)
    a.state = "draining"
    with Client([a.address, b.address], balance=Balance.IN_ORDER, clock=clock, health_interval_s=0) as c:
        c.predict(1)
        clock.advance(1.0)
        assert c.check_health()[f"tcp://{a.address}"] == "draining"
        a.state = "ready"
        clock.advance(1.0)
        assert c.check_health()[f"tcp://{a.address}"] == "up"


def test_closed_client_refuses_calls(make_server: Make) -> None:
    s = make_server()
    c = Client(s.address)
    c.close()
    with pytest.raises(Unavailable, match="closed"):
        c.predict(1)


def test_many_threads_share_one_client(make_server: Make) -> None:
    s = make_server()
    with Client(s.address, pool_size=4, timeout_s=10.0) as c:
        errors: list[BaseException] = []

        def work(base: int) -> None:
            try:
                for k in range(base, base + 50):
                    assert c.predict(k).outputs["p"] == k
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i * 1000,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert c.statistics()["requests"] == 400


def test_non_idempotent_requests_are_never_hedged(make_server: Make) -> None:
    a, b = make_server(), make_server()
    a.script = a.hold
    with Client([a.address, b.address], balance=Balance.IN_ORDER, hedge=HEDGE, health_interval_s=0) as c:
        with pytest.raises(Timeout):
            c.predict(1, idempotent=False, timeout_s=0.05)
        assert c.statistics()["hedges_sent"] == 0
    assert b.requests == []


def test_default_timeout_is_the_budget_plus_the_margin(make_server: Make) -> None:
    s = make_server()
    s.script = s.hold
    with Client(s.address, timeout_margin_s=0.01, timeout_s=30.0) as c:
        c.connect()
        with pytest.raises(Timeout, match=r"0\.011 s"):
            c.predict(1, budget_us=1000)


def test_connect_opens_a_connection_to_every_endpoint(make_server: Make, refused: str) -> None:
    a, b = make_server(), make_server()
    with Client([a.address, refused, b.address], health_interval_s=0) as c:
        assert c.connect() == 2
        assert c.statistics()["endpoints"][f"tcp://{refused}"] == "down"
    assert len(a.conns) == len(b.conns) == 1


def test_a_single_endpoint_whose_connection_dies_is_retried_on_a_new_connection(make_server: Make) -> None:
    """One endpoint, several workers behind it: a worker's death takes one connection, not
    the endpoint.  The idempotent request is retried on a fresh connection to the same
    address, and the endpoint stays up."""
    s = make_server()
    died: list[int] = []

    def die_once(conn: FakeConn, req: Request) -> None:
        if not died:  # a worker dies: its connection goes, the listener stays
            died.append(req.id)
            conn.close()
        else:
            s.echo(conn, req)

    s.script = die_once
    with Client(s.address, health_interval_s=0) as c:
        r = c.predict(1)
        stats = c.statistics()
    assert r.status == Status.OK and died and stats["retries"] == 1
    assert stats["connections_opened"] == 2 and stats["endpoints"][f"tcp://{s.address}"] == "up"


def test_warm_connections_are_opened_by_connect_and_carry_a_retry(make_server: Make) -> None:
    s = make_server()
    died: list[FakeConn] = []
    served_on: list[FakeConn] = []

    def first_dies(conn: FakeConn, req: Request) -> None:  # one worker dies, the listener stays
        if not died:
            died.append(conn)
            conn.close()
        else:
            served_on.append(conn)
            conn.reply(req)

    s.script = first_dies
    with Client(s.address, pool_size=1, warm_connections=3, health_interval_s=0) as c:
        assert c.connect() == 1
        assert c.statistics()["connections_opened"] == 3
        r = c.predict(5)
        assert r.outputs["p"] == 5.0 and r.attempts == 2
        assert c.statistics()["connections_opened"] == 3  # the re-send took a pooled one
        assert served_on[0] in s.conns[:3] and served_on[0] is not died[0]
