"""``tailguard serve --online-url`` end to end: a real redis-server, features written to it by an
in-process service (its stream processor), and a real server process reading them through its
near-cache.

The server's decisions, through the binary-protocol client, equal the in-process engine's on the
same Redis (outputs bit for bit, rung, flags).  Redis killed: the server keeps answering, from
the ladder, flagged ``FEATURES_UNAVAILABLE``, with an OK status — and says so in ``/metrics``.
Redis restarted on the same port (empty): fresh values reach the next decisions without
restarting the server.
"""

from __future__ import annotations

import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from services import RedisServer, running_redis
from toyservice import CTX, feed, render_spec

from tailguard import Service, load_service
from tailguard.client import Client, Result
from tailguard.decision import Decision, Flag
from tailguard.schema.wire import Status
from tailguard.serve.process import ServerProcess

# The spec's URL is never used: both processes are given the test server's with --online-url.
# A short heartbeat so the server notices a dead link quickly (loopback resets it at once anyway).
ONLINE = """
[online]
backend = "redis"
url = "redis://127.0.0.1:1/0"
timeout = "200ms"
heartbeat = "100ms"
"""
UNFED = Flag.FEATURES_UNAVAILABLE
# "bulk" has a 20 ms budget: ample for the primary rung on a loaded CI machine, so both sides
# answer from the same rung and the comparison is about features, not timing.
PRIORITY = "bulk"


def wait_for(done: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Poll a condition another process makes true (a readiness wait, not a race fix)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def redis_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server for this module (tests restart it on the same port when they kill it)."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def service_dir(toy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy service with ``[online] backend = "redis"`` appended."""
    d = Path(shutil.copytree(toy_dir, tmp_path_factory.mktemp("svc") / "toy"))
    (d / "service.toml").write_text(render_spec() + ONLINE)
    return d


@pytest.fixture(scope="module")
def writer(service_dir: Path, redis_up: RedisServer) -> Iterator[Service]:
    """The same service in this process: its stream writes features to Redis, and its engine is
    the reference the server must agree with."""
    svc = load_service(service_dir, freeze_gc=False, online_url=redis_up.url)
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def server(service_dir: Path, redis_up: RedisServer) -> Iterator[ServerProcess]:
    with ServerProcess.start(service_dir, "--tcp", "127.0.0.1:0", "--http", "127.0.0.1:0",
                             "--online-url", redis_up.url) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[Client]:
    assert server.tcp is not None
    with Client([server.tcp]) as c:
        yield c


def served(client: Client, key: str) -> Result:
    return client.predict(key, CTX, priority=PRIORITY, budget_us=20_000)


def local(writer: Service, key: str) -> Decision:
    return writer.engine.predict(key, CTX, priority=PRIORITY)


def same(got: Result, want: Decision) -> bool:
    """Same rung, flags and outputs, bit for bit (the wire carries the engine's float32 values)."""
    outputs = {n: float(v) for n, v in zip(want.output_names, want.outputs.tolist(), strict=True)}
    return (got.rung, int(got.flags), got.outputs) == (want.rung, int(want.flags), outputs)


def metrics(server: ServerProcess) -> dict[str, float]:
    """``/metrics`` samples by name (summed over label sets)."""
    with urllib.request.urlopen(f"http://{server.http}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


# Each test writes its own entities (the server's cached entry of a key another test wrote would be
# dropped by a push that arrives asynchronously).
def test_served_decisions_equal_the_in_process_engine_on_the_same_redis(
    writer: Service, client: Client
) -> None:
    feed(writer, "a", (105.0, 106.0))
    feed(writer, "b", (95.0,), size=8.0)
    for key in ("a", "b", "never-written"):
        want = local(writer, key)
        got = served(client, key)
        assert got.status is Status.OK
        assert same(got, want), (key, got, want)
    assert local(writer, "a").rung == "primary" and local(writer, "a").flags == 0
    assert served(client, "never-written").flags & Flag.UNKNOWN_ENTITY


def test_served_batches_equal_the_in_process_engine_on_the_same_redis(
    writer: Service, client: Client
) -> None:
    feed(writer, "d", (101.0, 99.0))
    feed(writer, "e", (90.0,), size=9.0)
    keys = ["d", "never-written", "e", "d"]
    want = writer.engine.predict_batch(keys, CTX, priority=PRIORITY)
    got = client.predict_batch(keys, CTX, priority=PRIORITY, budget_us=20_000)
    assert got.status is Status.OK
    assert list(got.rungs) == [want.rung_names[i] for i in want.rungs.tolist()]
    assert [int(f) for f in got.flags] == want.flags.tolist()
    for j, name in enumerate(want.output_names):
        assert got.outputs[name].tolist() == want.outputs[:, j].tolist()


def test_a_new_write_reaches_the_served_decision(writer: Service, client: Client) -> None:
    feed(writer, "c", (100.0,))
    first = served(client, "c")  # now in the server's near-cache
    feed(writer, "c", (140.0,))
    want = local(writer, "c")
    assert want.outputs.tolist() != [first.outputs[n] for n in want.output_names]
    # The server's cached entry is dropped by the invalidation push (another process's write).
    wait_for(lambda: same(served(client, "c"), want))


def test_redis_down_then_back_without_restarting_the_server(
    writer: Service, client: Client, server: ServerProcess, redis_up: RedisServer
) -> None:
    feed(writer, "r", (110.0,))
    wait_for(lambda: same(served(client, "r"), local(writer, "r")))
    before = served(client, "r")
    redis_up.stop()

    # Never read before, so never cached: the server must go to Redis, which refuses.
    d = served(client, "never-seen")
    assert (d.status, d.rung, d.flags) == (Status.OK, "default", UNFED | Flag.FALLBACK)
    # A cached strict value is served only while the link proves it fresh; the server notices
    # the dead link (a reset on loopback) and then answers from the ladder, flagged.
    wait_for(lambda: bool(served(client, "r").flags & UNFED))
    d = served(client, "r")
    assert d.status is Status.OK and d.rung in ("last_good", "default")
    assert d.flags == UNFED | Flag.FALLBACK
    m = metrics(server)
    assert m["tailguard_engine_features_unavailable_total"] >= 2
    assert m["tailguard_online_link_up"] == 0

    redis_up.start()  # the same port, empty (no persistence)
    feed(writer, "r", (40.0,))  # the writer's connection reconnects on its next call
    want = local(writer, "r")
    assert (want.rung, want.flags) == ("primary", 0)
    assert want.outputs.tolist() != [before.outputs[n] for n in want.output_names]
    wait_for(lambda: same(served(client, "r"), want))
    wait_for(lambda: metrics(server)["tailguard_online_link_up"] == 1)  # the listener is back
    m = metrics(server)
    assert m["tailguard_online_link_connects_total"] >= 2
