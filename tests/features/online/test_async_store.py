"""The asyncio Redis store and its near-cached front against a real redis-server."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import numpy as np
import pytest
import redis
from services import RedisServer

from tailguard.features.online.asyncstore import AsyncNearCachedStore, AsyncRedisOnlineStore
from tailguard.features.online.errors import FeatureStoreError, FeatureStoreUnavailable
from tailguard.features.online.protocol import Consistency, ValueFlag, ViewPolicy, ViewSet
from tailguard.features.view import FeatureView
from tailguard.spec import EntitySpec
from tailguard.testing import FakeClock


def make(url: str, views: dict[str, FeatureView], entities: tuple[EntitySpec, ...], clock: FakeClock,
         **kw: Any) -> AsyncRedisOnlineStore:
    return AsyncRedisOnlineStore(views, entities, service="toy", url=url, clock=clock, **kw)


def test_async_reads_and_writes_round_trip_in_one_turn(
    proxy: Any, views: dict[str, FeatureView], entities: tuple[EntitySpec, ...]
) -> None:
    clock = FakeClock()
    vs = ViewSet([views["profile"], views["activity"]])
    keys = [f"u{i}" for i in range(50)]  # ~5 kB of commands: one TCP segment to the proxy

    async def main() -> None:
        s = make(proxy.url, views, entities, clock)
        try:
            await s.write_many("profile", keys, np.arange(150, dtype=np.float32).reshape(50, 3))
            await s.write("activity", "u7", [1.0, 2.0])
            clock.advance(5.0)
            turns = proxy.turns
            rows = await s.read_many(vs, keys)
            assert proxy.turns - turns == 1
            assert rows.values[:50, 0].tolist() == [3.0 * i for i in range(50)]
            assert rows.ages_ns[0, 0] == 5 * 10**9 and rows.flags[0, 1] == ValueFlag.MISSING
            one = await s.read(vs, "u7")
            assert one.values[0].tolist() == [21.0, 22.0, 23.0, 1.0, 2.0]
            assert proxy.turns - turns == 2
        finally:
            await s.aclose()

    asyncio.run(main())


def test_concurrent_reads_on_one_loop_each_get_their_own_answer(
    redis_up: RedisServer, views: dict[str, FeatureView], entities: tuple[EntitySpec, ...]
) -> None:
    vs = ViewSet([views["item_stats"]])

    async def main() -> None:
        # 50 connections open at once: generous timeouts, so a loaded machine cannot fail a correctness test.
        s = make(redis_up.url, views, entities, FakeClock(), timeout_s=10.0, connect_timeout_s=10.0)
        try:
            keys = list(range(50))
            values = np.stack([np.arange(50), -np.arange(50)], 1).astype(np.float32)
            await s.write_many("item_stats", keys, values)
            results = await asyncio.gather(*(s.read(vs, k) for k in keys))
            assert [r.values[0].tolist() for r in results] == [[k, -k] for k in keys]
        finally:
            await s.aclose()

    asyncio.run(main())


def test_async_store_translates_errors_and_recovers_after_a_restart(
    redis_up: RedisServer, raw: redis.Redis, views: dict[str, FeatureView], entities: tuple[EntitySpec, ...]
) -> None:
    vs = ViewSet([views["item_stats"]])

    async def main() -> None:
        s = make(redis_up.url, views, entities, FakeClock())
        try:
            await s.write("item_stats", 1, [0.5, 2.0])
            # Several pooled connections, all of which a restart leaves dead.
            await asyncio.gather(*(s.read(vs, 1) for _ in range(4)))
            raw.set("tg:{toy:item:9}", "not a hash")
            with pytest.raises(FeatureStoreError) as err:
                await s.read(vs, 9)
            assert not isinstance(err.value, FeatureStoreUnavailable)
            redis_up.stop()
            with pytest.raises(FeatureStoreUnavailable) as info:
                await s.read(vs, 1)
            assert info.value.reason == "unreachable"
            with pytest.raises(FeatureStoreUnavailable):
                await s.write("item_stats", 1, [0.5, 2.0])
            redis_up.start()
            assert (await s.read(vs, 1)).flags[0, 0] == ValueFlag.MISSING  # same store, back and empty
            await asyncio.gather(*(s.read(vs, 1) for _ in range(4)))
            redis_up.restart()  # pooled connections dead again: the read still succeeds
            assert (await s.read(vs, 1)).flags[0, 0] == ValueFlag.MISSING
            await s.write("item_stats", 1, [0.25, 4.0])
            assert (await s.read(vs, 1)).values[0].tolist() == [0.25, 4.0]
        finally:
            await s.aclose()

    asyncio.run(main())


def test_async_store_times_out_on_a_stalled_redis(
    redis_up: RedisServer, views: dict[str, FeatureView], entities: tuple[EntitySpec, ...]
) -> None:
    vs = ViewSet([views["item_stats"]])

    async def main() -> None:
        s = make(redis_up.url, views, entities, FakeClock(), timeout_s=0.05)
        try:
            await s.read(vs, 1)
            assert redis_up.proc is not None
            redis_up.proc.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(FeatureStoreUnavailable) as info:
                    await s.read(vs, 1)
                assert info.value.reason == "timeout"
            finally:
                redis_up.proc.send_signal(signal.SIGCONT)
            assert (await s.read(vs, 1)).flags[0, 0] == ValueFlag.MISSING
        finally:
            await s.aclose()

    asyncio.run(main())


def test_async_near_cache_hits_invalidates_and_degrades_by_consistency_class(
    redis_up: RedisServer, raw: redis.Redis, views: dict[str, FeatureView], entities: tuple[EntitySpec, ...]
) -> None:
    clock = FakeClock()
    eventual = ViewSet([views["activity"]], {"activity": ViewPolicy(Consistency.EVENTUAL, 5.0)})
    strict = ViewSet([views["profile"]])

    async def main() -> None:
        s = AsyncNearCachedStore(make(redis_up.url, views, entities, clock), clock=clock, heartbeat_s=1000.0,
                                 start=False)
        try:
            s.listener.connect()
            await s.write("activity", "u", [4.0, 5.0])
            await s.write("profile", "u", [1.0, 2.0, 3.0])
            await s.read(eventual, "u")
            await s.read(strict, "u")
            hit = await s.read(eventual, "u")
            assert hit.flags[0, 0] == ValueFlag.CACHED and s.store.statistics()["reads"] == 2
            raw.hset("tg:{toy:user:u}", "unrelated", b"x")  # any change of the key is pushed
            token = b"tg:{toy:user:u}"
            for _ in range(50):
                if token not in s.cache:
                    break
                s.listener.pump(0.2)
            assert token not in s.cache
            await s.read(eventual, "u")
            await s.read(strict, "u")
            redis_up.stop()
            with pytest.raises(FeatureStoreUnavailable):
                s.listener.pump(1.0)
            clock.advance(1.0)
            rows = await s.read(eventual, "u")
            assert rows.flags[0, 0] == ValueFlag.CACHED | ValueFlag.UNCONFIRMED
            assert rows.values[0].tolist() == [4.0, 5.0]
            with pytest.raises(FeatureStoreUnavailable) as info:
                await s.read(strict, "u")
            assert info.value.views == ("profile",)
        finally:
            await s.aclose()

    asyncio.run(main())
