"""The remote feature stage (``features.remote``) against the embedded one, on the same writes:
two entities whose views interleave in the wide vector, unknown and stale rows, TTLs, scalar
keys broadcast over a batch, and write times — from a real redis-server."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from services import RedisServer

from tailguard.decision import Flag
from tailguard.features.assembler import FeatureAssembler
from tailguard.features.online.redis import RedisOnlineStore
from tailguard.features.remote import KeyIndex, RemoteFeatures
from tailguard.features.store import InMemoryOnlineStore
from tailguard.features.view import FeatureView
from tailguard.spec import EntitySpec
from tailguard.testing import FakeClock

USED = ["profile", "item_stats", "activity"]  # user, item, user: the user's columns are not contiguous


class Pair:
    """The embedded stage and the remote one over the same views, written alike."""

    def __init__(self, views: dict[str, FeatureView], entities: tuple[EntitySpec, ...], url: str) -> None:
        self.clock = FakeClock()
        self.mem = InMemoryOnlineStore(views, entities, clock=self.clock)
        self.mem_asm = FeatureAssembler(views, USED, self.mem)
        self.redis = RedisOnlineStore(views, entities, service="toy", url=url, clock=self.clock)
        self.index = KeyIndex(views, entities, self.redis, clock=self.clock)
        self.remote_asm = FeatureAssembler(views, USED, self.index)
        self.remote = RemoteFeatures(self.redis, self.remote_asm, views)
        self.width = self.mem_asm.width

    def write(self, view: str, key: object, values: list[float]) -> None:
        self.mem.write(view, key, values)
        self.redis.write(view, key, values)

    def one(self, user: str, item: int) -> tuple[tuple[np.ndarray, int, list[int]], ...]:
        now = self.clock.now_ns()
        a, b = np.zeros(self.width, np.float32), np.zeros(self.width, np.float32)
        fa = self.mem_asm.fill_one((self.mem.row("user", user), self.mem.row("item", item)), None, a, now)
        fb = self.remote.fill_one({"user": user, "item": item}, None, b, now)
        return ((a, fa, self.mem_asm.written_ns[0].tolist()),
                (b, fb, self.remote_asm.written_ns[0].tolist()))

    def many(self, users: list[str], item: int) -> tuple[tuple[np.ndarray, list[int], list[list[int]]], ...]:
        now, n = self.clock.now_ns(), len(users)
        rows = np.stack([self.mem.rows("user", users), np.full(n, self.mem.row("item", item))], axis=1)
        a, b = np.zeros((n, self.width), np.float32), np.zeros((n, self.width), np.float32)
        fa = self.mem_asm.fill_many(rows, None, a, now)
        fb = self.remote.fill_many({"user": users, "item": item}, n, None, b, now)
        return ((a, fa.tolist(), self.mem_asm.written_ns[:n].tolist()),
                (b, fb.tolist(), self.remote_asm.written_ns[:n].tolist()))


@pytest.fixture
def pair(
    redis_up: RedisServer, views: dict[str, FeatureView], entities: tuple[EntitySpec, ...]
) -> Iterator[Pair]:
    p = Pair(views, entities, redis_up.url)
    yield p
    p.redis.close()


def same(got: tuple[tuple[np.ndarray, object, object], ...]) -> None:
    (a, fa, wa), (b, fb, wb) = got
    np.testing.assert_array_equal(b, a)
    assert (fb, wb) == (fa, wa)


def test_one_entity_pair_fills_like_the_embedded_store(pair: Pair) -> None:
    pair.write("profile", "u1", [30.0, 0.5, 7.0])
    pair.write("activity", "u1", [3.0, 0.25])
    pair.write("item_stats", 7, [0.1, 19.0])
    pair.write("profile", "u2", [40.0, 0.1, 1.0])  # no activity: stale, not unknown
    pair.clock.advance(1.5)
    for user, item in (("u1", 7), ("u2", 7), ("nobody", 7), ("u1", 8)):
        same(pair.one(user, item))
    (_, flags, _), _ = pair.one("u2", 8)
    assert flags == Flag.STALE_FEATURE | Flag.UNKNOWN_ENTITY


def test_a_batch_with_a_broadcast_key_fills_like_the_embedded_store(pair: Pair) -> None:
    pair.write("profile", "u1", [30.0, 0.5, 7.0])
    pair.write("activity", "u1", [3.0, 0.25])
    pair.write("item_stats", 7, [0.1, 19.0])
    pair.clock.advance(0.25)
    pair.write("profile", "u2", [40.0, 0.1, 1.0])
    same(pair.many(["u1", "u2", "nobody", "u1"], 7))


def test_values_past_their_ttl_are_stale_in_both(pair: Pair) -> None:
    pair.write("profile", "u1", [30.0, 0.5, 7.0])
    pair.write("activity", "u1", [3.0, 0.25])
    pair.clock.advance(61.0)  # activity's TTL is 60 s
    got = pair.one("u1", 7)
    same(got)
    assert got[1][1] & Flag.STALE_FEATURE
    same(pair.many(["u1"], 7))
