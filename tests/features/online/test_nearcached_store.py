"""The near-cached Redis store against a real redis-server: hits, pushed invalidations, TTLs,
consistency classes (strict vs eventual), Redis killed and restarted.

The invalidation listener is pumped by the tests (``start=False``) on a ``FakeClock``, so link
times and staleness are exact; one test runs the real background thread end to end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import redis
from services import RedisServer

from tailguard.clock import MonotonicClock
from tailguard.features.online.cached import NearCachedStore
from tailguard.features.online.codec import encode_invalidation
from tailguard.features.online.errors import FeatureStoreUnavailable
from tailguard.features.online.invalidation import InvalidationMode
from tailguard.features.online.protocol import Consistency, Rows, ValueFlag, ViewPolicy, ViewSet
from tailguard.features.online.redis import RedisOnlineStore
from tailguard.features.view import FeatureView
from tailguard.spec import EntitySpec
from tailguard.testing import FakeClock

SERVICE = "toy"
CACHED = ValueFlag.CACHED
UNCONFIRMED = ValueFlag.UNCONFIRMED


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


Factory = Callable[..., NearCachedStore]


@pytest.fixture
def make(
    redis_up: RedisServer, views: dict[str, FeatureView], entities: tuple[EntitySpec, ...], clock: FakeClock
) -> Iterator[Factory]:
    """Builds near-cached stores (connected listener, not started) closed after the test."""
    made: list[NearCachedStore] = []

    def build(
        *, mode: InvalidationMode = InvalidationMode.TRACKING, heartbeat_s: float = 1000.0,
        url: str | None = None, connect: bool = True, **kw: Any,
    ) -> NearCachedStore:
        inner = RedisOnlineStore(views, entities, service=SERVICE, url=url or redis_up.url, clock=clock)
        s = NearCachedStore(inner, mode=mode, clock=clock, heartbeat_s=heartbeat_s, start=False, **kw)
        made.append(s)
        if connect:
            s.listener.connect()
        return s

    yield build
    for s in made:
        s.close()


@pytest.fixture
def writer(
    redis_up: RedisServer, views: dict[str, FeatureView], entities: tuple[EntitySpec, ...], clock: FakeClock
) -> Iterator[RedisOnlineStore]:
    """Another process's writer (a feature worker): a plain store that publishes its writes."""
    w = RedisOnlineStore(views, entities, service=SERVICE, url=redis_up.url, clock=clock)
    yield w
    w.close()


def pump_until(s: NearCachedStore, done: Callable[[], bool], rounds: int = 50) -> None:
    """Apply pushes as they arrive (each pump waits for data, up to 0.2 s) until ``done()``."""
    for _ in range(rounds):
        if done():
            return
        s.listener.pump(0.2)
    assert done(), "the push never arrived"


def sync(s: NearCachedStore, raw: redis.Redis, pump: bool = True) -> None:
    """Return once every push of the writes made so far has been applied (a barrier).

    Pushes of one connection arrive in order, so once the push of a write made now has been
    applied, so have the earlier ones (which would otherwise drop entries filled after them).
    """
    token = b"tg:{toy:sync}"
    s.cache.fill({token: {}}, 0, s.cache.epoch)
    if s.listener.mode is InvalidationMode.TRACKING:
        raw.set(token, 1)
    else:
        raw.publish(s.store.layout.channel, encode_invalidation([token]))
    if pump:
        pump_until(s, lambda: token not in s.cache)
    else:
        wait_for(lambda: token not in s.cache)


def vset(views: dict[str, FeatureView], *names: str, eventual_s: float | None = None) -> ViewSet:
    pol = {} if eventual_s is None else {n: ViewPolicy(Consistency.EVENTUAL, eventual_s) for n in names}
    return ViewSet([views[n] for n in names], pol)


def reads(s: NearCachedStore) -> int:
    return int(s.store.statistics()["reads"])


def test_miss_then_hit_serves_from_memory_with_ages(
    make: Factory, writer: RedisOnlineStore, views: dict[str, FeatureView], clock: FakeClock
) -> None:
    s = make()
    vs = vset(views, "profile", "activity")
    writer.write("profile", "u", [1.0, 2.0, 3.0])
    writer.write("activity", "u", [4.0, 5.0])
    first = s.read(vs, "u")
    assert reads(s) == 1 and first.flag_any() == 0
    clock.advance(3.0)
    hit = s.read(vs, "u")
    assert reads(s) == 1, "a hit must not touch Redis"
    assert hit.values[0].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert hit.flags[0].tolist() == [CACHED, CACHED]  # proven fresh: no UNCONFIRMED
    assert hit.ages_ns[0].tolist() == [3 * 10**9, 3 * 10**9]  # ages still grow while cached
    assert s.statistics()["near_cache"]["hits"] == 1


def test_unknown_entities_are_cached_as_missing(make: Factory, views: dict[str, FeatureView]) -> None:
    s = make()
    vs = vset(views, "profile")
    s.read(vs, "ghost")
    rows = s.read(vs, "ghost")
    assert reads(s) == 1 and rows.flags[0, 0] == CACHED | ValueFlag.MISSING
    assert rows.values[0].tolist() == [-1.0, 0.0, 0.0]


def test_read_many_fetches_only_the_misses_in_one_round_trip(
    make: Factory, writer: RedisOnlineStore, views: dict[str, FeatureView], proxy: Any
) -> None:
    s = make(url=proxy.url)
    vs = vset(views, "profile")
    keys = [f"u{i}" for i in range(20)]
    writer.write_many("profile", keys, np.arange(60, dtype=np.float32).reshape(20, 3))
    s.read_many(vs, keys[:10])
    turns, keys_read = proxy.turns, s.store.statistics()["keys_read"]
    rows = s.read_many(vs, keys)
    assert proxy.turns - turns == 1 and s.store.statistics()["keys_read"] - keys_read == 10
    assert rows.values[:20, 0].tolist() == [3.0 * i for i in range(20)]
    assert (rows.flags[:10, 0] == CACHED).all() and (rows.flags[10:20, 0] == 0).all()
    s.read_many(vs, keys)
    assert proxy.turns - turns == 1  # everything cached now: no I/O at all


def test_a_write_elsewhere_is_pushed_and_invalidates_by_tracking(
    make: Factory, writer: RedisOnlineStore, raw: redis.Redis, views: dict[str, FeatureView]
) -> None:
    s = make(mode=InvalidationMode.TRACKING)
    writer.publish_invalidations = False  # tracking needs nothing from writers
    vs = vset(views, "profile")
    writer.write("profile", "u", [1.0, 2.0, 3.0])
    sync(s, raw)
    s.read(vs, "u")
    hk = s.store.layout.key("user", "u")
    assert hk in s.cache
    writer.write("profile", "u", [9.0, 9.0, 9.0])
    pump_until(s, lambda: hk not in s.cache)
    rows = s.read(vs, "u")
    assert rows.values[0].tolist() == [9.0, 9.0, 9.0] and rows.flags[0, 0] == 0


def test_tracking_sees_writes_by_any_client_and_flushes(
    make: Factory, writer: RedisOnlineStore, raw: redis.Redis, views: dict[str, FeatureView]
) -> None:
    s = make(mode=InvalidationMode.TRACKING)
    vs = vset(views, "profile")
    writer.write_many("profile", ["a", "b"], np.ones((2, 3), dtype=np.float32))
    sync(s, raw)
    s.read_many(vs, ["a", "b"])
    raw.delete("tg:{toy:user:a}")  # an operator's redis-cli
    pump_until(s, lambda: s.store.layout.key("user", "a") not in s.cache)
    assert s.store.layout.key("user", "b") in s.cache
    raw.flushall()
    pump_until(s, lambda: len(s.cache) == 0)


def test_a_write_elsewhere_is_pushed_and_invalidates_by_pubsub(
    make: Factory, writer: RedisOnlineStore, raw: redis.Redis, views: dict[str, FeatureView]
) -> None:
    s = make(mode=InvalidationMode.PUBSUB)
    vs = vset(views, "profile")
    writer.write_many("profile", ["a", "b"], np.ones((2, 3), dtype=np.float32))
    sync(s, raw)
    s.read_many(vs, ["a", "b"])
    writer.write("profile", "a", [5.0, 5.0, 5.0])  # HSET and PUBLISH in one pipeline
    pump_until(s, lambda: s.store.layout.key("user", "a") not in s.cache)
    assert s.store.layout.key("user", "b") in s.cache
    assert s.read(vs, "a").values[0].tolist() == [5.0, 5.0, 5.0]
    raw.publish("tg:inv:toy", b"\xc1garbage")  # a malformed message: keys unknown, drop everything
    pump_until(s, lambda: len(s.cache) == 0)
    assert s.listener.statistics()["malformed"] == 1


def test_own_writes_invalidate_at_once(make: Factory, views: dict[str, FeatureView]) -> None:
    s = make()
    vs = vset(views, "profile")
    s.write("profile", "u", [1.0, 2.0, 3.0])
    s.read(vs, "u")
    s.write("profile", "u", [4.0, 5.0, 6.0])  # no pump: this process knows it wrote
    assert s.read(vs, "u").values[0].tolist() == [4.0, 5.0, 6.0]


def test_an_invalidation_during_a_fetch_keeps_the_old_value_out(
    make: Factory, writer: RedisOnlineStore, raw: redis.Redis, views: dict[str, FeatureView]
) -> None:
    s = make()
    vs = vset(views, "profile")
    writer.write("profile", "u", [1.0, 2.0, 3.0])
    sync(s, raw)
    hk = s.store.layout.key("user", "u")
    rows = Rows.for_views(vs)
    rows.reset(1)
    miss, epoch, now = s.front.lookup(vs, [hk], rows)
    replies = s.store.fetch(vs, [hk])  # the old value is on its way back ...
    writer.write("profile", "u", [7.0, 7.0, 7.0])  # ... when a write lands and is pushed
    sync(s, raw)
    s.front.complete(vs, [hk], miss, replies, rows, epoch, now)
    assert rows.values[0].tolist() == [1.0, 2.0, 3.0]  # this read saw the old value (it was sent first)
    assert hk not in s.cache  # but the cache did not keep it
    assert s.read(vs, "u").values[0].tolist() == [7.0, 7.0, 7.0]


def test_ttl_expiry_applies_to_cached_values(
    make: Factory, writer: RedisOnlineStore, raw: redis.Redis, views: dict[str, FeatureView], clock: FakeClock
) -> None:
    s = make(entry_ttl_s=1000.0)
    vs = vset(views, "activity")  # 60 s TTL
    writer.write("activity", "u", [4.0, 5.0])
    sync(s, raw)
    s.read(vs, "u")
    clock.advance(59.0)
    s.listener.pump(0)  # heard: still proven
    assert s.read(vs, "u").values[0].tolist() == [4.0, 5.0]
    clock.advance(2.0)
    rows = s.read(vs, "u")
    assert reads(s) == 1
    assert rows.values[0].tolist() == [0.0, 0.5] and rows.flags[0, 0] == CACHED | ValueFlag.EXPIRED
    assert rows.ages_ns[0, 0] == 61 * 10**9


def test_entries_older_than_the_entry_ttl_are_fetched_again_even_when_proven(
    make: Factory, writer: RedisOnlineStore, raw: redis.Redis, views: dict[str, FeatureView], clock: FakeClock
) -> None:
    s = make(entry_ttl_s=10.0)
    profile, extra = vset(views, "profile"), vset(views, "extra0")
    writer.write("profile", "u", [1.0, 2.0, 3.0])
    sync(s, raw)
    s.read(profile, "u")
    clock.advance(6.0)
    s.read(extra, "u")  # merged into the entry, which stays as old as its oldest part
    clock.advance(5.0)  # 11 s: past the entry TTL, although no push came
    assert s.read(profile, "u").flags[0, 0] == 0 and reads(s) == 3
    assert s.read(profile, "u").flags[0, 0] == CACHED and reads(s) == 3
    # The profile refill replaced the over-age entry: extra0 is fetched again, then cached.
    assert not s.read(extra, "u").flags[0, 0] & CACHED and reads(s) == 4
    assert s.read(extra, "u").flags[0, 0] & CACHED and reads(s) == 4


def test_strict_views_are_never_served_unproven(
    make: Factory, writer: RedisOnlineStore, views: dict[str, FeatureView], clock: FakeClock
) -> None:
    s = make(heartbeat_s=1.0)  # link timeout 2 s
    vs = vset(views, "profile")
    writer.write("profile", "u", [1.0, 2.0, 3.0])
    s.read(vs, "u")
    s.read(vs, "u")
    assert reads(s) == 1
    clock.advance(2.5)  # not heard for longer than the link timeout: no proof
    rows = s.read(vs, "u")
    assert reads(s) == 2 and not rows.flags[0, 0] & CACHED
    s.listener.close_link()  # the link is down
    rows = s.read(vs, "u")
    assert reads(s) == 3 and not rows.flags[0, 0] & CACHED


def test_eventual_views_serve_within_their_bound_flagged(
    make: Factory, writer: RedisOnlineStore, views: dict[str, FeatureView], clock: FakeClock
) -> None:
    s = make()
    vs = vset(views, "profile", eventual_s=5.0)
    writer.write("profile", "u", [1.0, 2.0, 3.0])
    s.read(vs, "u")
    s.listener.close_link()
    clock.advance(4.0)
    rows = s.read(vs, "u")
    assert reads(s) == 1 and rows.flags[0, 0] == CACHED | UNCONFIRMED
    assert rows.ages_ns[0, 0] == 4 * 10**9 and rows.values[0].tolist() == [1.0, 2.0, 3.0]
    clock.advance(2.0)  # 6 s since last known fresh: beyond the bound, ask Redis
    rows = s.read(vs, "u")
    assert reads(s) == 2 and rows.flags[0, 0] == 0
    clock.advance(1.0)  # the refetch is fresh as of its own fetch, 1 s ago
    rows = s.read(vs, "u")
    assert reads(s) == 2 and rows.flags[0, 0] == CACHED | UNCONFIRMED
    assert s.statistics()["near_cache"]["unconfirmed"] == 2


def test_a_mixed_view_set_goes_to_redis_when_a_strict_view_lacks_proof(
    make: Factory, writer: RedisOnlineStore, views: dict[str, FeatureView]
) -> None:
    s = make()
    vs = ViewSet([views["profile"], views["activity"]], {"activity": ViewPolicy(Consistency.EVENTUAL, 60.0)})
    writer.write("profile", "u", [1.0, 2.0, 3.0])
    s.read(vs, "u")
    s.listener.close_link()
    rows = s.read(vs, "u")
    assert reads(s) == 2 and not rows.flag_any() & CACHED


def test_redis_killed_serves_eventual_from_cache_and_fails_strict(
    make: Factory, writer: RedisOnlineStore, raw: redis.Redis, views: dict[str, FeatureView],
    clock: FakeClock, redis_up: RedisServer,
) -> None:
    s = make()
    eventual = vset(views, "activity", eventual_s=5.0)
    strict = vset(views, "profile")
    writer.write("profile", "u", [1.0, 2.0, 3.0])
    writer.write("activity", "u", [4.0, 5.0])
    sync(s, raw)
    s.read(eventual, "u")
    s.read(strict, "u")
    redis_up.stop()
    with pytest.raises(FeatureStoreUnavailable):
        s.listener.pump(1.0)  # the link sees the server go
    assert not s.cache.link_up
    clock.advance(2.0)
    rows = s.read(eventual, "u")
    assert rows.values[0].tolist() == [4.0, 5.0] and rows.flags[0, 0] == CACHED | UNCONFIRMED
    assert rows.ages_ns[0, 0] == 2 * 10**9
    with pytest.raises(FeatureStoreUnavailable) as info:
        s.read(strict, "u")
    assert info.value.views == ("profile",) and info.value.reason == "unreachable"
    with pytest.raises(FeatureStoreUnavailable):  # one cached, one not: the uncached one cannot be served
        s.read_many(eventual, ["u", "other"])
    clock.advance(4.0)  # 6 s: beyond the eventual bound
    with pytest.raises(FeatureStoreUnavailable) as info:
        s.read(eventual, "u")
    assert info.value.views == ("activity",)
    assert s.statistics()["near_cache"]["unavailable"] == 3


def test_redis_restarted_recovers_without_recreating_the_store(
    make: Factory, writer: RedisOnlineStore, raw: redis.Redis, views: dict[str, FeatureView],
    redis_up: RedisServer,
) -> None:
    s = make()
    eventual = vset(views, "activity", eventual_s=60.0)
    writer.write("activity", "u", [4.0, 5.0])
    sync(s, raw)
    s.read(eventual, "u")
    redis_up.stop()
    with pytest.raises(FeatureStoreUnavailable):
        s.listener.pump(1.0)
    with pytest.raises(FeatureStoreUnavailable):
        s.listener.connect()  # still down
    redis_up.start()  # back, and empty
    s.listener.connect()  # what the listener thread's backoff loop does
    assert len(s.cache) == 0 and s.cache.link_up  # pushes were missed while down: nothing trusted
    rows = s.read(eventual, "u")
    assert rows.flags[0, 0] == ValueFlag.MISSING  # Redis' truth (empty), not the old cached value
    writer.write("activity", "u", [6.0, 7.0])
    pump_until(s, lambda: s.store.layout.key("user", "u") not in s.cache)
    assert s.read(eventual, "u").values[0].tolist() == [6.0, 7.0]


def test_a_silent_link_is_declared_lost_within_two_heartbeats(
    make: Factory, views: dict[str, FeatureView], clock: FakeClock
) -> None:
    s = make(heartbeat_s=1.0)
    clock.advance(1.2)
    s.listener.pump(0)  # idle for a heartbeat: PING sent
    pump_until(s, lambda: s.cache.last_heard_ns == clock.now_ns())  # PONG heard
    assert s.cache.proven(clock.now_ns())
    clock.advance(2.5)  # nothing heard for more than two heartbeats
    with pytest.raises(FeatureStoreUnavailable):
        s.listener.pump(0)
    assert not s.cache.link_up and not s.listener.connected


def wait_for(done: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll a condition the background thread makes true (a readiness wait, not a race fix)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_background_listener_invalidates_and_reconnects(
    redis_up: RedisServer, raw: redis.Redis, views: dict[str, FeatureView], entities: tuple[EntitySpec, ...],
) -> None:
    clock = MonotonicClock()
    writer = RedisOnlineStore(views, entities, service=SERVICE, url=redis_up.url)
    s = NearCachedStore(RedisOnlineStore(views, entities, service=SERVICE, url=redis_up.url),
                        clock=clock, heartbeat_s=0.2)
    try:
        vs = vset(views, "profile")
        wait_for(lambda: s.cache.link_up)
        writer.write("profile", "u", [1.0, 2.0, 3.0])
        sync(s, raw, pump=False)
        s.read(vs, "u")
        hk = s.store.layout.key("user", "u")
        assert hk in s.cache
        writer.write("profile", "u", [2.0, 2.0, 2.0])
        wait_for(lambda: hk not in s.cache)
        redis_up.restart()
        wait_for(lambda: s.listener.connects >= 2 and s.cache.link_up)
        writer.write("profile", "u", [3.0, 3.0, 3.0])
        assert s.read(vs, "u").values[0].tolist() == [3.0, 3.0, 3.0]
    finally:
        s.close()
        writer.close()
    assert not s.listener.connected


def test_a_read_the_cache_serves_only_in_part_is_flagged_as_fetched(
    make: Factory, writer: RedisOnlineStore, views: dict[str, FeatureView]
) -> None:
    s = make()
    writer.write("profile", "u", [1.0, 2.0, 3.0])
    writer.write("activity", "u", [4.0, 5.0])
    s.read(vset(views, "profile"), "u")  # the entry holds profile only
    both = vset(views, "profile", "activity")
    rows = s.read(both, "u")  # profile could come from memory, activity cannot: one fetch of both
    assert reads(s) == 2
    assert rows.values[0].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert rows.flags[0].tolist() == [0, 0]  # fetched: no CACHED bit left over from the partial serve
    many = s.read_many(both, ["u", "v"])
    assert many.flags[:2].tolist() == [[CACHED, CACHED], [ValueFlag.MISSING, ValueFlag.MISSING]]


def test_a_replaced_entry_serves_its_own_values_not_an_older_row(
    make: Factory, writer: RedisOnlineStore, raw: redis.Redis, views: dict[str, FeatureView], clock: FakeClock
) -> None:
    s = make()
    vs = vset(views, "profile", "activity")
    writer.write("profile", "u", [1.0, 2.0, 3.0])
    writer.write("activity", "u", [4.0, 5.0])
    s.read(vs, "u")
    assert s.read(vs, "u").values[0].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]  # a hit (row memoised)
    writer.write("activity", "u", [6.0, 7.0])
    sync(s, raw)
    s.read(vs, "u")  # refetched after the push
    clock.advance(1.0)
    hit = s.read(vs, "u")
    assert reads(s) == 2 and hit.flags[0].tolist() == [CACHED, CACHED]
    assert hit.values[0].tolist() == [1.0, 2.0, 3.0, 6.0, 7.0]
    assert hit.ages_ns[0].tolist() == [10**9, 10**9]
