"""The engine serving features from Redis through the near-cache (``[online] backend = "redis"``):
the same decisions as the embedded store, one round trip per request, ages recorded, and the
ladder answering (flagged) when Redis is down or slow — never an exception to the caller.

Every test loads the toy service (tests/toyservice.py) on a ``FakeClock`` against this module's
redis-server; the invalidation listener runs on its own thread as in production (its
heartbeat is an hour of fake time, so only the tests move link times).
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from enginekit import EVENTUAL, UNCONFIRMED, UNFED, wait_for
from services import RedisServer, free_port
from toyservice import CTX, feed, render_spec

from tailguard import Service, load_service
from tailguard.decision import Flag
from tailguard.errors import FeatureError, ValidationError
from tailguard.features.remote import KeyIndex
from tailguard.features.store import NEVER, InMemoryOnlineStore
from tailguard.testing import FakeClock

ONLINE = """
[online]
backend = "redis"
url = "redis://127.0.0.1:1/0"
timeout = "200ms"
heartbeat = "1h"
"""


def redis_dir(toy_dir: Path, dest: Path, *, eventual: bool = False) -> Path:
    """A copy of the toy service reading its stored view from Redis."""
    shutil.copytree(toy_dir, dest)
    spec = render_spec()
    if eventual:
        spec = spec.replace('ttl = "10s"', EVENTUAL)
    (dest / "service.toml").write_text(spec + ONLINE)
    return dest


Loader = Callable[..., Service]


@pytest.fixture
def load(redis_up: RedisServer, toy_dir: Path, tmp_path: Path, clock: FakeClock) -> Iterator[Loader]:
    """Loads Redis-backed copies of the toy service (closed after the test); waits for the link."""
    loaded: list[Service] = []

    def build(*, eventual: bool = False, url: str | None = None, directory: Path | None = None) -> Service:
        d = directory or redis_dir(toy_dir, tmp_path / f"svc{len(loaded)}", eventual=eventual)
        svc = load_service(d, clock=clock, freeze_gc=False, online_url=url or redis_up.url)
        loaded.append(svc)
        wait_for(lambda: cache(svc).link_up)
        return svc

    yield build
    for svc in loaded:
        svc.close()


def cache(svc: Service) -> object:
    return svc.online.cache  # type: ignore[union-attr]


def settle(svc: Service, raw: redis.Redis) -> None:
    """Return once every invalidation push of the writes made so far has been applied (pushes
    of one connection arrive in order: a token key written now is applied after them)."""
    c = svc.online.cache  # type: ignore[union-attr]
    token = b"tg:{toy:sync}"
    c.fill({token: {}}, 0, c.epoch)
    raw.set(token, 1)
    wait_for(lambda: token not in c)


def round_trips(svc: Service) -> int:
    return int(svc.online.store.reads)  # type: ignore[union-attr]


def kill(server: RedisServer, svc: Service) -> None:
    server.stop()
    wait_for(lambda: not svc.online.cache.link_up)  # type: ignore[union-attr]


# -- the embedded store is untouched -------------------------------------------------------------
def test_memory_backend_has_no_remote_stage(service: Service) -> None:
    assert service.online is None and service.engine.remote is None
    assert type(service.store) is InMemoryOnlineStore
    stats = service.engine.statistics()
    assert (stats["features_unavailable"], stats["features_unconfirmed"]) == (0, 0)


# -- same decisions, one round trip, ages ---------------------------------------------------------
def test_redis_backend_decides_like_the_embedded_store(load: Loader, service: Service) -> None:
    svc = load()
    for s in (service, svc):
        feed(s, "a", (105.0, 106.0))
        feed(s, "b", (95.0,), size=8.0)
    for key in ("a", "b", "never-written"):
        want, got = service.engine.predict(key, CTX), svc.engine.predict(key, CTX)
        np.testing.assert_array_equal(svc.engine.last_features(1), service.engine.last_features(1))
        assert (got.rung, got.flags, got.outputs.tolist()) == (want.rung, want.flags, want.outputs.tolist())
    keys = ["a", "never-written", "b", "a"]
    want_b, got_b = service.engine.predict_batch(keys, CTX), svc.engine.predict_batch(keys, CTX)
    np.testing.assert_array_equal(svc.engine.last_features(4), service.engine.last_features(4))
    np.testing.assert_array_equal(got_b.outputs, want_b.outputs)
    np.testing.assert_array_equal(got_b.flags, want_b.flags)
    assert got_b.flags[1] == Flag.UNKNOWN_ENTITY


def test_one_round_trip_per_request_and_none_for_a_cached_entity(
    load: Loader, raw: redis.Redis, command_calls: Callable[[], dict[str, int]]
) -> None:
    svc = load()
    for k in ("a", "b", "c"):
        feed(svc, k)
    settle(svc, raw)
    before, calls = round_trips(svc), command_calls().get("hmget", 0)
    svc.engine.predict("a", CTX)
    assert round_trips(svc) - before == 1
    svc.engine.predict("a", CTX)  # proven fresh by the link: served from process memory
    assert round_trips(svc) - before == 1
    svc.engine.predict_batch(["b", "c", "x", "y"], CTX)  # four entities, one pipelined round trip
    assert round_trips(svc) - before == 2
    assert command_calls()["hmget"] - calls == 5


def test_ages_give_the_write_time_on_the_engine_clock(load: Loader, clock: FakeClock) -> None:
    svc = load()
    written = clock.now_ns()
    feed(svc, "a")
    clock.advance(2.5)
    svc.engine.predict("a", CTX)
    assert svc.engine.last_written_ns(1).tolist() == [[written]]
    assert svc.engine.assembler.filled_ns == clock.now_ns()
    svc.engine.predict_batch(["a", "nobody"], CTX)
    assert svc.engine.last_written_ns(2).tolist() == [[written], [NEVER]]


def test_a_written_stream_value_reaches_the_next_decision(load: Loader, raw: redis.Redis) -> None:
    svc = load()
    feed(svc, "a", (100.0,))
    svc.engine.predict("a", CTX)
    first = float(svc.engine.last_features(1)[0, 0])
    feed(svc, "a", (120.0,))  # this process's write drops its cached entry at once
    svc.engine.predict("a", CTX)
    assert float(svc.engine.last_features(1)[0, 0]) > first


# -- Redis down, slow, back ----------------------------------------------------------------------
def test_strict_view_with_redis_down_is_answered_by_the_ladder(load: Loader, redis_up: RedisServer) -> None:
    svc = load()
    feed(svc, "a")
    assert svc.engine.predict("a", CTX).rung == "primary"
    kill(redis_up, svc)
    d = svc.engine.predict("a", CTX)  # cached, but not provably fresh: a strict view refuses it
    assert (d.rung, d.flag) == ("last_good", UNFED | Flag.FALLBACK)
    assert svc.engine.last_written_ns(1).tolist() == [[NEVER]]
    d = svc.engine.predict("never-seen", CTX)
    assert (d.rung, d.output("p"), d.flag) == ("default", 0.25, UNFED | Flag.FALLBACK)
    b = svc.engine.predict_batch(["a", "never-seen"], CTX)
    assert [svc.engine.rung_names[i] for i in b.rungs] == ["last_good", "default"]
    assert (b.flags == UNFED | Flag.FALLBACK).all()
    stats = svc.engine.statistics()
    assert stats["features_unavailable"] == 4
    assert stats["rungs"]["primary"]["answered"] == 1


def test_redis_restarted_serves_fresh_values_without_reloading(load: Loader, redis_up: RedisServer) -> None:
    svc = load()
    feed(svc, "a", (100.0,))
    svc.engine.predict("a", CTX)
    kill(redis_up, svc)
    assert svc.engine.predict("a", CTX).flag & UNFED
    redis_up.start()  # the same port, empty (no persistence)
    feed(svc, "a", (130.0,))  # the stream's writes reconnect too
    d = svc.engine.predict("a", CTX)
    assert (d.rung, d.flags) == ("primary", 0)
    assert float(svc.engine.last_features(1)[0, 0]) == 115.0  # the EWMA of 100 and 130: written after
    wait_for(lambda: svc.online.cache.link_up)  # type: ignore[union-attr]  # the listener is back


def test_slow_redis_falls_to_the_ladder_within_the_read_timeout(
    load: Loader, redis_up: RedisServer
) -> None:
    svc = load()
    feed(svc, "a")
    assert redis_up.proc is not None
    redis_up.proc.send_signal(signal.SIGSTOP)
    try:
        d = svc.engine.predict("b", CTX)  # not cached: the read times out
        assert (d.rung, d.flag) == ("default", UNFED | Flag.FALLBACK)
    finally:
        redis_up.proc.send_signal(signal.SIGCONT)
    d = svc.engine.predict("a", CTX)
    assert (d.rung, d.flags) == ("primary", 0)


def test_eventual_view_serves_the_cache_within_its_bound_then_falls_to_the_ladder(
    load: Loader, redis_up: RedisServer, raw: redis.Redis, clock: FakeClock
) -> None:
    svc = load(eventual=True)
    feed(svc, "a", (100.0,))
    settle(svc, raw)
    # Fills the near-cache (and the last-good answer): a first read can outlast the 200 ms
    # timeout on a loaded machine (seen once in a full run), so until one comes back.
    wait_for(lambda: svc.engine.predict("a", CTX).rung == "primary")
    fresh = svc.engine.last_features(1).copy()
    before = svc.engine.statistics()
    kill(redis_up, svc)
    d = svc.engine.predict("a", CTX)
    assert (d.rung, d.flag) == ("primary", UNCONFIRMED)
    np.testing.assert_array_equal(svc.engine.last_features(1), fresh)
    clock.advance(0.6)  # past max_staleness = 500ms
    d = svc.engine.predict("a", CTX)
    assert (d.rung, d.flag) == ("last_good", UNFED | Flag.FALLBACK)
    stats = svc.engine.statistics()
    assert (stats["features_unconfirmed"] - before["features_unconfirmed"],
            stats["features_unavailable"] - before["features_unavailable"]) == (1, 1)


# -- the key index and writes through the service -------------------------------------------------
def test_service_store_writes_go_to_redis_and_holds_no_values(load: Loader) -> None:
    svc = load()
    svc.store.write("stats", "z", [101.0, 3.0, 7.0])
    rows = np.array([(1.0, 2.0, 3.0), (4.0, 5.0, 6.0)], dtype=svc.views["stats"].row_dtype)
    svc.store.write_many("stats", ["y", "x"], rows)
    b = svc.engine.predict_batch(["z", "y", "x"], CTX)
    assert (b.flags == 0).all()
    got = svc.engine.last_features(3)[:, :3].tolist()
    assert got == [[101.0, 3.0, 7.0], [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    with pytest.raises(FeatureError, match="shared online store"):
        svc.store.read("stats", "z")


def test_key_index_gives_rows_on_first_sight_up_to_its_bound(load: Loader) -> None:
    svc = load()
    index = KeyIndex(svc.views, svc.spec.entities, svc.online, max_keys=2)  # type: ignore[arg-type]
    assert index.rows("item", ["a", "b", "a", "c"]).tolist() == [1, 2, 1, 0]
    assert (index.row("item", "b"), index.row("item", "d"), index.overflow) == (2, 0, 2)
    with pytest.raises(ValidationError):
        index.rows("item", ["a", 3])


def test_a_service_loads_and_answers_while_redis_is_down(
    toy_dir: Path, tmp_path: Path, clock: FakeClock
) -> None:
    svc = load_service(redis_dir(toy_dir, tmp_path / "svc"), clock=clock, freeze_gc=False,
                       online_url=f"redis://127.0.0.1:{free_port()}/0")
    try:
        d = svc.engine.predict("a", CTX)
        assert (d.rung, d.flag) == ("default", UNFED | Flag.FALLBACK)
    finally:
        svc.close()
