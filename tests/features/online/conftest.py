"""Fixtures of the online store tests: a redis-server per test module, views of a toy service,
a counting proxy (round trips seen on the wire) and Redis' own command counters."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
import redis
from services import RedisServer, running_redis

from tailguard.features.view import FeatureView, compile_views
from tailguard.spec import Duration, EntitySpec, FeatureViewSpec, FieldSpec, ViewSource

SERVICE = "toy"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server on a free loopback port for this test module (killed after it)."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_up(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The module's server, running and empty at the start of the test (restarted if a test killed it)."""
    if redis_server.proc is None:
        redis_server.start()
    r = redis.Redis.from_url(redis_server.url)
    r.flushall()
    r.config_resetstat()
    r.close()
    yield redis_server
    if redis_server.proc is not None:
        try:
            redis_server.proc.send_signal(18)  # SIGCONT, in case a test paused it and failed
        except ProcessLookupError:
            redis_server.proc = None


@pytest.fixture
def raw(redis_up: RedisServer) -> Iterator[redis.Redis]:
    """A plain redis-py client of the test's server (what an outside writer or an operator uses)."""
    r = redis.Redis.from_url(redis_up.url)
    yield r
    r.close()


@pytest.fixture
def command_calls(raw: redis.Redis) -> Callable[[], dict[str, int]]:
    """A function returning Redis' per-command call counts (INFO commandstats) since the test began.

    CONFIG and INFO themselves (the test's own bookkeeping) are left out.
    """

    def calls() -> dict[str, int]:
        stats = raw.info("commandstats")
        out = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
        return {k: v for k, v in out.items() if not k.startswith(("config", "info"))}

    return calls


class CountingProxy:
    """A loopback TCP proxy in front of Redis that counts round trips per client connection.

    A **turn** (round trip) starts when a client sends bytes after the server has answered it
    (or for the first time): a client that pipelines N commands sends them all before it reads
    a reply, so it makes one turn; a client that waits for each reply makes N.
    """

    def __init__(self, port: int) -> None:
        self._target = ("127.0.0.1", port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.turns = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._stop_r, self._stop_w = socket.socketpair()
        self._threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while True:
            ready, _, _ = select.select([self._listener, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            client, _ = self._listener.accept()
            server = socket.create_connection(self._target)
            with self._lock:
                self.connections += 1
            t = threading.Thread(target=self._pump, args=(client, server), daemon=True)
            t.start()
            self._threads.append(t)

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        answered = True  # the next client bytes start a turn
        try:
            while True:
                ready, _, _ = select.select([client, server, self._stop_r], [], [])
                if self._stop_r in ready:
                    return
                if client in ready:
                    data = client.recv(1 << 20)
                    if not data:
                        return
                    if answered:
                        with self._lock:
                            self.turns += 1
                        answered = False
                    server.sendall(data)
                if server in ready:
                    data = server.recv(1 << 20)
                    if not data:
                        return
                    answered = True
                    client.sendall(data)
        except OSError:
            return
        finally:
            client.close()
            server.close()

    def close(self) -> None:
        self._stop_w.send(b"x")
        for t in self._threads:
            t.join(timeout=5)
        self._listener.close()
        self._stop_r.close()
        self._stop_w.close()


@pytest.fixture
def proxy(redis_up: RedisServer) -> Iterator[CountingProxy]:
    """A ``CountingProxy`` in front of the test's redis-server."""
    p = CountingProxy(redis_up.port)
    yield p
    p.close()


ENTITIES = (EntitySpec(name="user"), EntitySpec(name="item", key_dtype="int64"))


def _specs() -> tuple[FeatureViewSpec, ...]:
    return (
        FeatureViewSpec(name="profile", entity="user", fields=(
            FieldSpec(name="age", default=-1.0), FieldSpec(name="score"), FieldSpec(name="n", dtype="int64"),
        ), source=ViewSource.BATCH),
        FeatureViewSpec(name="activity", entity="user", ttl=Duration(60.0), fields=(
            FieldSpec(name="clicks"), FieldSpec(name="rate", default=0.5),
        )),
        FeatureViewSpec(name="item_stats", entity="item", fields=(
            FieldSpec(name="ctr"), FieldSpec(name="price", default=9.0),
        )),
        # Five more views of ``user``: a model reading seven views still costs one round trip.
        *(FeatureViewSpec(name=f"extra{i}", entity="user", fields=(FieldSpec(name="x"), FieldSpec(name="y")))
          for i in range(5)),
    )


@pytest.fixture(scope="session")
def views() -> dict[str, FeatureView]:
    """Stored views: seven of ``user`` (``activity`` with a 60 s TTL), one of ``item`` (int keys)."""
    return compile_views(_specs())


@pytest.fixture(scope="session")
def entities() -> tuple[EntitySpec, ...]:
    return ENTITIES
