"""The Redis online store against a real redis-server: round trips, layout, ages, TTLs, faults."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import redis
from services import RedisServer

from tailguard.features.online import replies as replies_mod
from tailguard.features.online.errors import FeatureStoreError, FeatureStoreUnavailable
from tailguard.features.online.protocol import NO_AGE, Rows, ValueFlag, ViewSet
from tailguard.features.online.redis import RedisOnlineStore
from tailguard.features.online.wire import WireConnection
from tailguard.features.view import FeatureView
from tailguard.spec import EntitySpec
from tailguard.testing import FakeClock

SERVICE = "toy"
USER_VIEWS = ("profile", "activity", "extra0", "extra1", "extra2", "extra3", "extra4")


@pytest.fixture(autouse=True, params=["hiredis", "python"])
def general_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test twice: irregular replies read by hiredis' C reader, then by the pure-Python parser."""
    if request.param == "hiredis" and replies_mod._hiredis is None:
        pytest.skip("hiredis not installed")
    if request.param == "python":
        monkeypatch.setattr(replies_mod, "_hiredis", None)
    return str(request.param)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_store(
    views: dict[str, FeatureView], entities: tuple[EntitySpec, ...], url: str, clock: FakeClock,
    **kw: object,
) -> RedisOnlineStore:
    return RedisOnlineStore(views, entities, service=SERVICE, url=url, clock=clock, **kw)  # type: ignore[arg-type]


@pytest.fixture
def store(
    redis_up: RedisServer, views: dict[str, FeatureView], entities: tuple[EntitySpec, ...], clock: FakeClock
) -> Iterator[RedisOnlineStore]:
    s = make_store(views, entities, redis_up.url, clock)
    yield s
    s.close()


@pytest.fixture
def user_set(views: dict[str, FeatureView]) -> ViewSet:
    """All seven ``user`` views: what a wide model reads."""
    return ViewSet([views[n] for n in USER_VIEWS])


def fill_users(store: RedisOnlineStore, keys: list[str]) -> None:
    n = len(keys)
    base = np.arange(n, dtype=np.float32)[:, None]
    store.write_many("profile", keys, base + np.array([[0.0, 0.5, 7.0]], dtype=np.float32))
    store.write_many("activity", keys, base + np.array([[1.0, 0.25]], dtype=np.float32))
    for i in range(5):
        store.write_many(f"extra{i}", keys, base + np.array([[10.0 * i, -1.0]], dtype=np.float32))


def expected_row(i: int) -> list[float]:
    row = [i + 0.0, i + 0.5, i + 7.0, i + 1.0, i + 0.25]
    for k in range(5):
        row += [i + 10.0 * k, i - 1.0]
    return row


def test_one_entity_reads_every_view_it_wrote(store: RedisOnlineStore, user_set: ViewSet) -> None:
    fill_users(store, ["a", "b"])
    rows = store.read(user_set, "b")
    assert rows.n == 1 and rows.values[0].tolist() == expected_row(1)
    assert rows.flag_any() == 0 and (rows.ages_ns[0] == 0).all()


def test_one_entity_is_one_round_trip_whatever_the_view_count(
    proxy: Any, views: dict[str, FeatureView], entities: tuple[EntitySpec, ...], clock: FakeClock,
    user_set: ViewSet, command_calls: Callable[[], dict[str, int]],
) -> None:
    s = make_store(views, entities, proxy.url, clock)
    try:
        fill_users(s, ["a"])
        before_turns, before = proxy.turns, command_calls()
        for _ in range(3):
            assert s.read(user_set, "a").values[0].tolist() == expected_row(0)
        after = command_calls()
        # Seven views, three reads: three round trips, three HMGETs and no other command.
        assert proxy.turns - before_turns == 3
        assert {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)} == {"hmget": 3}
    finally:
        s.close()


class CountingSocket:
    """Wraps the read path's socket: a turn (round trip) is a send after a receive, or the first send.

    Counting at the client is exact whatever TCP does with the bytes: a pipelined batch is sent
    whole before any reply is read, however the kernel splits it into segments (a proxy could
    see the server answer early segments before the last one arrives and count two turns).
    """

    def __init__(self, sock: socket.socket, counter: list[int]) -> None:
        self._sock = sock
        self._counter = counter
        self._received = True

    def sendall(self, data: bytes) -> None:
        if self._received:
            self._counter[0] += 1
            self._received = False
        self._sock.sendall(data)

    def recv(self, n: int) -> bytes:
        self._received = True
        return self._sock.recv(n)

    def recv_into(self, buf: Any) -> int:
        self._received = True
        return self._sock.recv_into(buf)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_n_entities_are_one_pipelined_round_trip(
    store: RedisOnlineStore, user_set: ViewSet, command_calls: Callable[[], dict[str, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    turns = [0]
    connect = WireConnection._connect
    monkeypatch.setattr(WireConnection, "_connect", lambda self: CountingSocket(connect(self), turns))
    keys = [f"u{i}" for i in range(200)]
    fill_users(store, keys)
    before = command_calls()
    rows = store.read_many(user_set, keys)  # 200 entities x 7 views
    assert turns[0] == 1
    assert command_calls()["hmget"] - before.get("hmget", 0) == 200
    assert rows.n == 200
    assert all(rows.values[i].tolist() == expected_row(i) for i in range(200))
    store.read_many(user_set, keys[:50])
    assert turns[0] == 2


def test_read_many_of_no_keys_sends_nothing(
    proxy: Any, views: dict[str, FeatureView], entities: tuple[EntitySpec, ...], clock: FakeClock,
    user_set: ViewSet,
) -> None:
    s = make_store(views, entities, proxy.url, clock)
    try:
        assert s.read_many(user_set, []).n == 0 and proxy.turns == 0
    finally:
        s.close()


def test_stored_layout_is_one_hash_per_entity_with_versioned_fields(
    store: RedisOnlineStore, raw: redis.Redis, views: dict[str, FeatureView]
) -> None:
    store.write("item_stats", 7, [0.25, 3.0])
    store.write("profile", "u1", [30.0, 0.5, 2.0])
    assert sorted(raw.keys("*")) == [b"tg:{toy:item:7}", b"tg:{toy:user:u1}"]
    fields = raw.hkeys("tg:{toy:user:u1}")
    assert fields == [f"profile@{views['profile'].version}".encode()]
    assert len(raw.hget("tg:{toy:user:u1}", fields[0]) or b"") == 16 + 4 * 3


def test_unknown_entity_reads_defaults_flagged_missing(store: RedisOnlineStore, user_set: ViewSet) -> None:
    store.write("profile", "known", [1.0, 2.0, 3.0])
    rows = store.read_many(user_set, ["known", "ghost"])
    assert rows.values[1].tolist() == user_set.defaults.tolist()
    assert (rows.ages_ns[1] == NO_AGE).all() and (rows.flags[1] == ValueFlag.MISSING).all()
    # The known entity has profile only: its other views are missing, profile is not.
    assert rows.flags[0, 0] == 0 and (rows.flags[0, 1:] == ValueFlag.MISSING).all()


def test_ages_come_from_the_injected_clock_and_ttl_expires_values(
    store: RedisOnlineStore, views: dict[str, FeatureView], clock: FakeClock
) -> None:
    vs = ViewSet([views["profile"], views["activity"]])
    store.write("profile", "u", [1.0, 2.0, 3.0])
    store.write("activity", "u", [4.0, 5.0])
    clock.advance(59.0)
    rows = store.read(vs, "u")
    assert rows.ages_ns[0].tolist() == [59 * 10**9, 59 * 10**9]
    assert rows.values[0].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0] and rows.flag_any() == 0
    clock.advance(2.0)  # activity has a 60 s TTL, profile none
    rows = store.read(vs, "u")
    assert rows.values[0].tolist() == [1.0, 2.0, 3.0, 0.0, 0.5]
    assert rows.flags[0].tolist() == [0, ValueFlag.EXPIRED]
    assert rows.ages_ns[0].tolist() == [61 * 10**9, 61 * 10**9]


def test_two_versions_of_a_view_coexist(
    store: RedisOnlineStore, raw: redis.Redis, views: dict[str, FeatureView]
) -> None:
    import dataclasses

    old = dataclasses.replace(views["activity"], version="0" * 16)
    store.write(old, "u", [1.0, 1.0])
    store.write("activity", "u", [2.0, 2.0])
    assert store.read(ViewSet([old]), "u").values[0].tolist() == [1.0, 1.0]
    assert store.read(ViewSet([views["activity"]]), "u").values[0].tolist() == [2.0, 2.0]
    assert raw.hlen("tg:{toy:user:u}") == 2


def test_int_keys_round_trip(store: RedisOnlineStore, views: dict[str, FeatureView]) -> None:
    vs = ViewSet([views["item_stats"]])
    store.write_many("item_stats", [1, 2, 3], np.array([[0.1, 1], [0.2, 2], [0.3, 3]], dtype=np.float32))
    rows = store.read_many(vs, np.array([3, 1], dtype=np.int64).tolist())
    assert rows.values[:2, 1].tolist() == [3.0, 1.0]


def test_out_buffers_are_reused_and_grown(store: RedisOnlineStore, user_set: ViewSet) -> None:
    fill_users(store, [f"u{i}" for i in range(10)])
    out = Rows.for_views(user_set, 2)
    values = out.values
    assert store.read(user_set, "u3", out) is out and out.values is values
    store.read_many(user_set, [f"u{i}" for i in range(10)], out)
    assert out.n == 10 and out.values[9].tolist() == expected_row(9)


def test_bad_writes_raise_validation_errors(store: RedisOnlineStore) -> None:
    from tailguard.errors import ValidationError

    with pytest.raises(ValidationError):
        store.write("profile", "u", [1.0, 2.0])  # wrong width
    with pytest.raises(ValidationError):
        store.write("nope", "u", [1.0])
    with pytest.raises(ValidationError):
        store.write("item_stats", "not-an-int", [1.0, 2.0])


def test_an_error_reply_is_a_store_error_not_unavailability(
    store: RedisOnlineStore, raw: redis.Redis, user_set: ViewSet
) -> None:
    raw.set("tg:{toy:user:bad}", b"a string, not a hash")
    with pytest.raises(FeatureStoreError) as info:
        store.read(user_set, "bad")
    assert not isinstance(info.value, FeatureStoreUnavailable)
    # The connection was dropped after the error: the next read is clean.
    fill_users(store, ["a"])
    assert store.read(user_set, "a").values[0].tolist() == expected_row(0)


def test_corrupt_stored_bytes_serve_defaults_flagged(
    store: RedisOnlineStore, raw: redis.Redis, views: dict[str, FeatureView]
) -> None:
    vs = ViewSet([views["activity"]])
    raw.hset("tg:{toy:user:u}", f"activity@{views['activity'].version}", b"\x00" * 5)
    rows = store.read(vs, "u")
    assert rows.flags[0, 0] == ValueFlag.CORRUPT and rows.values[0].tolist() == [0.0, 0.5]


def test_redis_killed_raises_unavailable_and_restart_recovers_the_same_store(
    store: RedisOnlineStore, redis_up: RedisServer, user_set: ViewSet
) -> None:
    fill_users(store, ["a"])
    assert store.read(user_set, "a").values[0].tolist() == expected_row(0)
    redis_up.stop()
    with pytest.raises(FeatureStoreUnavailable) as info:
        store.read(user_set, "a")
    assert info.value.reason == "unreachable"
    with pytest.raises(FeatureStoreUnavailable):
        store.write("profile", "a", [1.0, 2.0, 3.0])
    with pytest.raises(FeatureStoreUnavailable):
        store.ping()
    redis_up.start()  # empty: no persistence
    rows = store.read(user_set, "a")  # the same store object, no restart of ours
    assert (rows.flags[0] == ValueFlag.MISSING).all()
    fill_users(store, ["a"])
    assert store.read(user_set, "a").values[0].tolist() == expected_row(0)
    store.ping()
    assert store.statistics()["errors"] >= 2


def test_a_restart_between_reads_is_absorbed_by_one_resend(
    store: RedisOnlineStore, redis_up: RedisServer, user_set: ViewSet
) -> None:
    fill_users(store, ["a"])
    store.read(user_set, "a")  # opens the read connection
    redis_up.restart()
    rows = store.read(user_set, "a")  # stale pooled connection: replaced, read sent once more
    assert (rows.flags[0] == ValueFlag.MISSING).all()


def test_a_stalled_redis_times_out_as_unavailable(
    redis_up: RedisServer, views: dict[str, FeatureView], entities: tuple[EntitySpec, ...], clock: FakeClock,
    user_set: ViewSet,
) -> None:
    s = make_store(views, entities, redis_up.url, clock, timeout_s=0.05)
    try:
        fill_users(s, ["a"])
        assert redis_up.proc is not None
        redis_up.proc.send_signal(signal.SIGSTOP)  # alive, connected, silent: a slow Redis
        try:
            with pytest.raises(FeatureStoreUnavailable) as info:
                s.read(user_set, "a")
            assert info.value.reason == "timeout"
        finally:
            redis_up.proc.send_signal(signal.SIGCONT)
        assert s.read(user_set, "a").values[0].tolist() == expected_row(0)
    finally:
        s.close()


def test_the_proxy_counts_one_turn_per_unpipelined_command(proxy: Any, raw: redis.Redis) -> None:
    """The instrument itself: a client that waits for each reply makes one turn per command."""
    raw.hset("h", "f", "v")
    r = redis.Redis.from_url(proxy.url)
    try:
        r.ping()  # connection setup (redis-py may send CLIENT SETINFO first)
        turns = proxy.turns
        for _ in range(3):
            r.hget("h", "f")
        assert proxy.turns - turns == 3
        pipe = r.pipeline(transaction=False)
        for _ in range(3):
            pipe.hget("h", "f")
        pipe.execute()
        assert proxy.turns - turns == 4
    finally:
        r.close()


def test_threads_read_concurrently_on_their_own_connections(
    store: RedisOnlineStore, user_set: ViewSet
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    keys = [f"u{i}" for i in range(40)]
    fill_users(store, keys)

    def reader(t: int) -> bool:
        ok = True
        for r in range(25):
            i = (t * 7 + r) % 40
            ok &= store.read(user_set, keys[i]).values[0].tolist() == expected_row(i)
            many = store.read_many(user_set, keys[i:] + keys[:i])
            ok &= many.values[0].tolist() == expected_row(i)
        return ok

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(reader, range(4)))
    assert store.statistics()["errors"] == 0
