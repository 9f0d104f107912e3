"""One protocol, two backends: the embedded store and Redis answer the same reads identically."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from services import RedisServer

from tailguard.features.online.memory import MemoryOnlineStore
from tailguard.features.online.protocol import NO_AGE, OnlineStore, Rows, ValueFlag, ViewSet
from tailguard.features.online.redis import RedisOnlineStore
from tailguard.features.view import FeatureView
from tailguard.spec import EntitySpec
from tailguard.testing import FakeClock


def scenario(store: OnlineStore, clock: FakeClock, views: dict[str, FeatureView]) -> list[Rows]:
    """Writes, then reads at three times; returns copies of what each read filled."""
    vs = ViewSet([views["profile"], views["activity"]])
    store.write("profile", "a", [30.0, 0.5, 2.0])
    store.write_many("activity", ["a", "b"], np.array([[1.0, 0.1], [2.0, 0.2]], dtype=np.float32))
    out: list[Rows] = []
    for step in (0.0, 30.0, 31.0):  # the 60 s TTL of activity passes at the last read
        clock.advance(step)
        rows = store.read_many(vs, ["a", "b", "ghost"])
        one = store.read(vs, "a")
        snap = Rows.for_views(vs, 4)
        snap.reset(4)
        for src, dst in ((rows, slice(0, 3)), (one, slice(3, 4))):
            snap.values[dst] = src.values[: src.n]
            snap.ages_ns[dst] = src.ages_ns[: src.n]
            snap.flags[dst] = src.flags[: src.n]
        out.append(snap)
    return out


@pytest.fixture
def redis_store(
    redis_up: RedisServer, views: dict[str, FeatureView], entities: tuple[EntitySpec, ...]
) -> Iterator[tuple[RedisOnlineStore, FakeClock]]:
    clock = FakeClock()
    s = RedisOnlineStore(views, entities, service="toy", url=redis_up.url, clock=clock)
    yield s, clock
    s.close()


def test_memory_and_redis_read_identically(
    redis_store: tuple[RedisOnlineStore, FakeClock], views: dict[str, FeatureView],
    entities: tuple[EntitySpec, ...],
) -> None:
    mem_clock = FakeClock()
    mem = scenario(MemoryOnlineStore(views, entities, clock=mem_clock), mem_clock, views)
    red = scenario(*redis_store, views)
    for m, r in zip(mem, red, strict=True):
        assert np.array_equal(m.values[:4], r.values[:4])
        assert np.array_equal(m.ages_ns[:4], r.ages_ns[:4])
        assert np.array_equal(m.flags[:4], r.flags[:4])
    last = mem[-1]
    assert last.flags[1].tolist() == [ValueFlag.MISSING, ValueFlag.EXPIRED]  # b: no profile, activity stale
    assert last.ages_ns[2].tolist() == [NO_AGE, NO_AGE]
    assert last.values[0].tolist() == [30.0, 0.5, 2.0, 0.0, 0.5]


def test_memory_store_reads_another_version_as_missing(
    views: dict[str, FeatureView], entities: tuple[EntitySpec, ...]
) -> None:
    import dataclasses

    store = MemoryOnlineStore(views, entities, clock=FakeClock())
    store.write("profile", "a", [1.0, 2.0, 3.0])
    other = ViewSet([dataclasses.replace(views["profile"], version="f" * 16)])
    rows = store.read(other, "a")
    assert rows.flags[0, 0] == ValueFlag.MISSING and rows.values[0].tolist() == [-1.0, 0.0, 0.0]
