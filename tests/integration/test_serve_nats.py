"""``tailguard serve --nats``: replicas sharing one queue group on a real nats-server.

Two (or three) real server processes subscribe to one subject in one queue group; the
library's NATS clients and raw nats-py requests talk to them.  Checked: decisions over NATS
equal the TCP ones; load reaches both replicas (their own ``/metrics``); a bad payload gets a
stable error reply and the replica keeps serving; a past deadline (header) is answered
EXPIRED; a replica killed with requests in flight costs those requests a timeout and a retry,
not an error; a draining replica is out of the group before it finishes what it holds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families
from services import NatsServer, running_nats
from toyservice import CTX

from tailguard.client import Client, InvalidRequest, Unavailable
from tailguard.client.nats import DEADLINE_HEADER, AsyncNatsClient, NatsClient
from tailguard.schema.frames import client_decoder
from tailguard.schema.wire import Reply, Request, Status
from tailguard.serve.app import ServeConfig
from tailguard.serve.process import ServerProcess

nats = pytest.importorskip("nats")

SUBJECT = "tailguard.toy.test"
PRIORITY = "bulk"  # a 20 ms budget: the primary answers even on a loaded CI machine
decode = client_decoder().decode
encode = msgspec.msgpack.Encoder().encode


@pytest.fixture(scope="module")
def nats_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with running_nats(tmp_path_factory.mktemp("nats") / "js") as server:
        yield server


def replica(toy_dir: Path, nats_up: NatsServer, *extra: str) -> ServerProcess:
    return ServerProcess.start(toy_dir, "--tcp", "127.0.0.1:0", "--http", "127.0.0.1:0",
                               "--nats", nats_up.url, "--nats-subject", SUBJECT, *extra)


@pytest.fixture(scope="module")
def pair(toy_dir: Path, nats_up: NatsServer) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two replicas in the default queue group (the service name)."""
    with replica(toy_dir, nats_up) as a, replica(toy_dir, nats_up) as b:
        yield a, b


@pytest.fixture(scope="module")
def client(nats_up: NatsServer, pair: tuple[ServerProcess, ServerProcess]) -> Iterator[NatsClient]:
    with NatsClient(nats_up.url, SUBJECT) as c:
        yield c


def answered(server: ServerProcess) -> float:
    """The replica's ``tailguard_answered_total`` (decisions it answered)."""
    with urllib.request.urlopen(f"http://{server.http}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "tailguard_answered_total")


async def raw_request(url: str, payload: bytes, headers: dict[str, str] | None = None) -> Reply:
    nc = await nats.connect(url)
    try:
        msg = await nc.request(SUBJECT, payload, timeout=10, headers=headers)
    finally:
        await nc.close()
    reply = decode(msg.data)
    assert isinstance(reply, Reply)
    return reply


def test_decisions_over_nats_equal_those_over_tcp(
    client: NatsClient, pair: tuple[ServerProcess, ServerProcess]
) -> None:
    assert pair[0].tcp is not None
    with Client(pair[0].tcp) as tcp:
        for key in ("a", "b", "never-seen"):
            got = client.predict(key, CTX, priority=PRIORITY, budget_us=20_000)
            want = tcp.predict(key, CTX, priority=PRIORITY, budget_us=20_000)
            assert (got.status, got.rung, got.flags, got.outputs, got.model_version) == (
                want.status, want.rung, want.flags, want.outputs, want.model_version)
            assert got.endpoint == f"nats:{SUBJECT}" and got.attempts == 1
        got_b = client.predict_batch(["a", "b", "a"], CTX, priority=PRIORITY, budget_us=20_000)
        want_b = tcp.predict_batch(["a", "b", "a"], CTX, priority=PRIORITY, budget_us=20_000)
    assert got_b.rungs == want_b.rungs and got_b.flags == want_b.flags
    assert got_b.output("p").tolist() == want_b.output("p").tolist()


def test_the_queue_group_spreads_requests_over_both_replicas(
    client: NatsClient, pair: tuple[ServerProcess, ServerProcess]
) -> None:
    before = [answered(s) for s in pair]
    n = 60
    for i in range(n):
        assert client.predict(f"k{i}", CTX, priority=PRIORITY).status is Status.OK
    gained = [answered(s) - b for s, b in zip(pair, before, strict=True)]
    assert sum(gained) == n
    assert min(gained) > 0  # all on one replica: probability 2**-59


def test_server_errors_map_to_the_client_error_tree(client: NatsClient) -> None:
    with pytest.raises(InvalidRequest) as info:
        client.predict("a", CTX, priority="no-such-class")
    assert info.value.status is Status.UNKNOWN_PRIORITY and info.value.field == "priority"


def test_a_bad_payload_gets_an_error_reply_and_the_replica_keeps_serving(
    nats_up: NatsServer, client: NatsClient
) -> None:
    garbage = asyncio.run(raw_request(nats_up.url, b"\xc1\xff not msgpack"))
    assert garbage.status == Status.MALFORMED and garbage.id == 0 and garbage.error
    # A Request (tag 4) whose budget is a string: refused by type, answered with its id.
    wrong = asyncio.run(raw_request(nats_up.url, msgspec.msgpack.encode([4, 77, "a", None, "", "soon"])))
    assert wrong.status == Status.INVALID_REQUEST and wrong.id == 77
    for i in range(6):  # both replicas (most likely) still serve
        assert client.predict(f"after-bad-{i}", CTX, priority=PRIORITY).status is Status.OK


def test_a_request_past_its_deadline_header_is_answered_expired(nats_up: NatsServer) -> None:
    req = encode(Request(5, "a", CTX, PRIORITY, 20_000))
    past = str(time.time_ns() // 1000 - 1_000)
    reply = asyncio.run(raw_request(nats_up.url, req, {DEADLINE_HEADER: past}))
    assert reply.status == Status.EXPIRED and reply.id == 5
    future = str(time.time_ns() // 1000 + 10_000_000)
    assert asyncio.run(raw_request(nats_up.url, req, {DEADLINE_HEADER: future})).status == Status.OK


def test_no_replica_on_the_subject_is_unavailable(nats_up: NatsServer) -> None:
    with NatsClient(nats_up.url, "tailguard.nobody.predict") as c, pytest.raises(Unavailable):
        c.predict("a", CTX)


def test_a_killed_replica_costs_its_requests_a_timeout_and_a_retry(
    toy_dir: Path, nats_up: NatsServer, pair: tuple[ServerProcess, ServerProcess]
) -> None:
    doomed = replica(toy_dir, nats_up)
    try:

        async def run() -> tuple[list[int], dict[str, int]]:
            nc = await nats.connect(nats_up.url)
            client = AsyncNatsClient(nats_up.url, SUBJECT, nc=nc, max_retries=2)
            await client.connect()
            # Stopped first, so the requests the group routes to it stay in flight there.
            os.kill(doomed.pid, signal.SIGSTOP)
            marker = await nc.subscribe("test.routed", max_msgs=1)
            calls = [asyncio.create_task(client.predict(f"x{i}", CTX, priority=PRIORITY, timeout_s=1.0))
                     for i in range(30)]
            await asyncio.sleep(0)  # every call publishes its request (queued on nc in order)...
            await nc.publish("test.routed", b"")  # ...then this, on the same connection:
            await marker.next_msg(timeout=10)  # back means NATS has routed every request before it
            os.kill(doomed.pid, signal.SIGKILL)
            results = await asyncio.gather(*calls)
            await nc.close()
            return [r.attempts for r in results], client.statistics()

        attempts, stats = asyncio.run(run())
    finally:
        doomed.kill()
        doomed.wait(10)
    assert len(attempts) == 30  # every call answered, none raised
    # Some went to the stopped replica (all avoiding it: probability (2/3)**30): retried once.
    assert max(attempts) == 2 and stats["retries"] == stats["timeouts"] == attempts.count(2)


def test_a_draining_replica_leaves_the_group_before_finishing(
    toy_dir: Path, nats_up: NatsServer, client: NatsClient, pair: tuple[ServerProcess, ServerProcess]
) -> None:
    from inthread import InThreadServer

    config = ServeConfig(nats=nats_up.url, nats_subject=SUBJECT, drain_timeout_s=30.0, calibrate=False)
    server = InThreadServer(toy_dir, config)
    try:
        app, loop = server.app, server.loop
        assert app.nats is not None
        seen = app.nats.received
        for i in range(30):  # it takes its share while in the group
            client.predict(f"d{i}", CTX, priority=PRIORITY)
        assert app.nats.received > seen

        def hold_and_drain() -> None:
            app.dispatcher.in_flight += 1  # stands for an accepted request still running
            app.begin_drain()

        loop.call_soon_threadsafe(hold_and_drain)
        deadline = time.monotonic() + 10
        while app.nats.statistics()["subscribed"]:  # UNSUB sent and a round trip made
            assert time.monotonic() < deadline, "never unsubscribed"
            time.sleep(0.01)  # waiting for the other thread's drain to get there, not racing it
        assert app.draining  # still holding its request...
        seen = app.nats.received
        results = [client.predict(f"e{i}", CTX, priority=PRIORITY) for i in range(30)]
        assert app.nats.received == seen  # ...and gets nothing new
        assert all(r.attempts == 1 for r in results)  # nobody was told DRAINING and retried
        loop.call_soon_threadsafe(lambda: setattr(app.dispatcher, "in_flight", app.dispatcher.in_flight - 1))
        asyncio.run_coroutine_threadsafe(app.wait_stopped(), loop).result(10)
        assert app.nats.closed
    finally:
        server.close()
