"""The online store's circuit breaker in the engine (``[online] breaker_*``): with Redis killed
the breaker opens and requests are answered by the ladder without touching Redis (counted as
short circuits; Redis' own command counters show no read), eventual views are served from the
near-cache within their bound meanwhile, one trial read closes it when Redis is back, and a
stopped (SIGSTOP) Redis opens it by the slow-call rule.

The toy service is loaded on a ``FakeClock`` against this module's redis-server; the breaker is
built from the loaded spec's ``[online]`` table as the loader should build it
(``online_breaker(spec.online, clock)``) and put on the engine's remote stage.
"""

from __future__ import annotations

import shutil
import signal
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from enginekit import EVENTUAL, UNCONFIRMED, UNFED, wait_for
from services import RedisServer
from toyservice import CTX, feed, render_spec

from tailguard import Service, load_service
from tailguard.clock import Clock
from tailguard.decision import Flag
from tailguard.errors import SpecError
from tailguard.features.online.errors import FeatureStoreUnavailable
from tailguard.features.remote import RemoteFeatures, online_breaker
from tailguard.resilience.breaker import BreakerState, CircuitBreaker
from tailguard.spec import OnlineSpec, parse_spec
from tailguard.testing import FakeClock

ONLINE = """
[online]
backend = "redis"
url = "redis://127.0.0.1:1/0"
timeout = "{timeout}"
heartbeat = "1h"
breaker_failures = {failures}
breaker_window = {window}
breaker_open = "1s"
breaker_slow = "10ms"
"""


Loader = Callable[..., Service]


@pytest.fixture
def load(redis_up: RedisServer, toy_dir: Path, tmp_path: Path, clock: FakeClock) -> Iterator[Loader]:
    """Loads a Redis-backed copy of the toy service on ``clock`` and fits it with the breaker its
    spec declares (on ``breaker_clock``, by default the same fake clock)."""
    loaded: list[Service] = []

    def build(*, eventual: bool = False, timeout: str = "200ms", failures: int = 3, window: int = 10,
              breaker_clock: Clock | None = None) -> Service:
        d = Path(shutil.copytree(toy_dir, tmp_path / f"svc{len(loaded)}"))
        spec = render_spec()
        if eventual:
            spec = spec.replace('ttl = "10s"', EVENTUAL)
        online = ONLINE.format(timeout=timeout, failures=failures, window=window)
        (d / "service.toml").write_text(spec + online)
        svc = load_service(d, clock=clock, freeze_gc=False, online_url=redis_up.url)
        loaded.append(svc)
        if breaker_clock is not None:  # load_service built it on the service's clock
            remote(svc).breaker = online_breaker(svc.spec.online, breaker_clock)
        wait_for(lambda: svc.online.cache.link_up)  # type: ignore[union-attr]
        return svc

    yield build
    for svc in loaded:
        svc.close()


def remote(svc: Service) -> RemoteFeatures:
    assert svc.engine.remote is not None
    return svc.engine.remote


def breaker(svc: Service) -> CircuitBreaker:
    return remote(svc).breaker


def reads(svc: Service) -> int:
    """Read round trips this replica sent to Redis (or tried to)."""
    return int(svc.online.store.reads)  # type: ignore[union-attr]


def kill(server: RedisServer, svc: Service) -> None:
    server.stop()
    wait_for(lambda: not svc.online.cache.link_up)  # type: ignore[union-attr]


def settle(svc: Service, raw: redis.Redis) -> None:
    """Return once every invalidation push of the writes made so far has been applied (pushes
    of one connection arrive in order: a token key written now is applied after them)."""
    c = svc.online.cache  # type: ignore[union-attr]
    token = b"tg:{toy:sync}"
    c.fill({token: {}}, 0, c.epoch)
    raw.set(token, 1)
    wait_for(lambda: token not in c)


def hmgets(raw: redis.Redis) -> int:
    """HMGET commands Redis executed since its counters were last reset (INFO commandstats)."""
    stats = raw.info("commandstats")
    return int(stats.get("cmdstat_hmget", {}).get("calls", 0))


# -- the spec ------------------------------------------------------------------------------------
def spec_with_online(**online: object) -> dict[str, object]:
    data = tomllib.loads(render_spec())
    data["online"] = {"backend": "redis", **online}
    return data


def test_the_breaker_keys_parse_and_build_the_declared_breaker() -> None:
    o = parse_spec(spec_with_online(breaker_failures=7, breaker_window=50, breaker_open="250ms",
                                    breaker_slow="5ms")).online
    br = online_breaker(o, FakeClock())
    cfg = br.config
    assert (cfg.failures, cfg.window, cfg.open_s, cfg.max_open_s, cfg.slow_s) == (7, 50, 0.25, 1.0, 0.005)
    assert (br.name, br.state) == ("online", BreakerState.CLOSED)
    # Doubling stops at 1 s (Redis back is tried within a second), or at a longer breaker_open.
    long = parse_spec(spec_with_online(breaker_open="3s")).online
    assert online_breaker(long, FakeClock()).config.max_open_s == 3.0


def test_load_service_fits_the_breaker_its_spec_declares(load: Loader) -> None:
    svc = load(failures=4, window=7, timeout="300ms")
    cfg = breaker(svc).config
    assert (cfg.failures, cfg.window, cfg.slow_s, cfg.open_s) == (4, 7, 0.01, 1.0)


def test_the_default_breaker_counts_half_the_read_timeout_as_slow() -> None:
    cfg = online_breaker(OnlineSpec()).config
    assert (cfg.failures, cfg.window, cfg.open_s, cfg.slow_s) == (5, 20, 1.0, 0.025)


@pytest.mark.parametrize(("key", "value"), [
    ("breaker_open", "0s"), ("breaker_slow", "0ms"), ("breaker_failures", -1), ("breaker_window", -2),
])
def test_bad_breaker_keys_are_spec_errors(key: str, value: object) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(spec_with_online(**{key: value}))
    assert info.value.path == f"$.online.{key}"


# -- Redis killed, then back -------------------------------------------------------------------
def test_an_open_breaker_answers_from_the_ladder_without_touching_redis(
    load: Loader, redis_up: RedisServer, raw: redis.Redis, clock: FakeClock
) -> None:
    svc = load()
    feed(svc, "a", (100.0,))
    assert svc.engine.predict("a", CTX).rung == "primary"
    kill(redis_up, svc)
    br = breaker(svc)
    for key in ("a", "b", "c"):  # three reads refused in a row: breaker_failures = 3
        assert svc.engine.predict(key, CTX).flag & UNFED
    assert (br.state, br.opened_by, br.failures) == (BreakerState.OPEN, "failures", 3)

    sent, errors = reads(svc), svc.online.store.errors  # type: ignore[union-attr]
    d = svc.engine.predict("a", CTX)
    assert (d.rung, d.flag) == ("last_good", UNFED | Flag.FALLBACK)  # its last good answer
    d = svc.engine.predict("never-seen", CTX)
    assert (d.rung, d.flag) == ("default", UNFED | Flag.FALLBACK)
    b = svc.engine.predict_batch(["a", "b", "never-seen"], CTX)
    assert (b.flags == UNFED | Flag.FALLBACK).all()
    assert br.short_circuited == 3
    assert (reads(svc), svc.online.store.errors) == (sent, errors)  # type: ignore[union-attr]
    assert svc.engine.statistics()["features_unavailable"] == 3 + 1 + 1 + 3

    redis_up.start()  # back (empty) on the same port, its command counters at zero
    feed(svc, "a", (130.0,))  # writes do not go through the breaker
    # The invalidation link reconnects on its own: proof that Redis answers again, so the next
    # read is the trial at once, without waiting out the open period (which a long outage grows).
    wait_for(lambda: svc.online.cache.link_up)  # type: ignore[union-attr]
    d = svc.engine.predict("a", CTX)
    assert (d.rung, d.flags) == ("primary", 0)
    assert float(svc.engine.last_features(1)[0, 0]) == 115.0  # the fresh EWMA of 100 and 130
    assert hmgets(raw) == 1 and br.state is BreakerState.CLOSED
    assert [t.reason for t in br.transitions] == ["failures", "open_elapsed", "trials_passed"]
    b = svc.engine.predict_batch(["a", "b"], CTX)
    assert not (b.flags & UNFED).any()


def test_a_failed_trial_reopens_and_the_period_stops_growing_at_a_second(
    load: Loader, redis_up: RedisServer, clock: FakeClock
) -> None:
    svc = load()  # breaker_open = 1s: doubling would pass the 1 s cap at once
    kill(redis_up, svc)
    br = breaker(svc)
    for key in ("a", "b", "c"):
        svc.engine.predict(key, CTX)
    assert br.state is BreakerState.OPEN
    sent = reads(svc)
    for trial in range(1, 4):  # each trial fails (Redis still down) and reopens for 1 s, not 2, 4...
        clock.advance(0.5)
        svc.engine.predict("a", CTX)
        assert reads(svc) - sent == trial - 1  # within the period: not tried
        clock.advance(0.5)
        assert svc.engine.predict("a", CTX).flag & UNFED  # the trial
        assert (reads(svc) - sent, br.state, br.opened_by) == (trial, BreakerState.OPEN, "trial_failed")


def test_eventual_values_are_served_from_the_cache_within_their_bound_while_open(
    load: Loader, redis_up: RedisServer, raw: redis.Redis, clock: FakeClock
) -> None:
    svc = load(eventual=True)
    feed(svc, "a", (100.0,))
    settle(svc, raw)  # the write's own invalidation push must not drop the entry read next
    svc.engine.predict("a", CTX)  # fetched and cached
    assert svc.online.store.layout.key("item", "a") in svc.online.cache  # type: ignore[union-attr]
    kill(redis_up, svc)
    br = breaker(svc)
    for key in ("b", "c", "d"):  # not cached: read from Redis, refused
        svc.engine.predict(key, CTX)
    assert br.state is BreakerState.OPEN
    sent = reads(svc)
    d = svc.engine.predict("a", CTX)
    assert (d.rung, d.flag) == ("primary", UNCONFIRMED)
    assert br.short_circuited == 0  # the cache answered: no call was asked for
    clock.advance(0.6)  # past max_staleness = 500ms, still within the open period
    d = svc.engine.predict("a", CTX)
    assert (d.rung, d.flag) == ("last_good", UNFED | Flag.FALLBACK)
    assert (br.short_circuited, reads(svc)) == (1, sent)


# -- Redis stopped: slow ---------------------------------------------------------------------------
def test_a_stopped_redis_opens_the_breaker_by_the_slow_call_rule(load: Loader, redis_up: RedisServer) -> None:
    from tailguard.clock import MonotonicClock

    # The consecutive rule off: only the rates over a window of 4 reads can open it.  Every read
    # times out after the request's 20 ms budget (under the 30 ms store timeout), over
    # breaker_slow = 10ms: slow and failed at once.
    svc = load(timeout="30ms", failures=0, window=4, breaker_clock=MonotonicClock())
    br = breaker(svc)
    assert redis_up.proc is not None
    redis_up.proc.send_signal(signal.SIGSTOP)
    try:
        for key in ("a", "b", "c", "d"):  # bulk: a 20 ms budget, so a read may wait 20 ms
            assert svc.engine.predict(key, CTX, priority="bulk").flag & UNFED
        assert (br.state, br.opened_by, br.slow, br.failures) == (BreakerState.OPEN, "slow_rate", 4, 4)
        sent = reads(svc)
        for key in ("a", "b", "c", "d", "e"):
            d = svc.engine.predict(key, CTX)
            assert (d.rung, d.flag) == ("default", UNFED | Flag.FALLBACK)
        assert (br.short_circuited, reads(svc)) == (5, sent)  # nobody waited for a timeout
    finally:
        redis_up.proc.send_signal(signal.SIGCONT)


# -- reads bounded by the request's budget ----------------------------------------------------------
def test_a_read_waits_at_most_what_the_request_has_left(load: Loader, redis_up: RedisServer,
                                                        clock: FakeClock) -> None:
    svc = load(timeout="200ms", failures=3)
    br = breaker(svc)
    wire = svc.online.store._wire()  # type: ignore[union-attr]
    svc.engine.predict("a", CTX, priority="critical")  # 500 µs budget on the fake clock
    assert wire.budget_s == pytest.approx(500e-6 - 30e-6)  # the budget less the ladder's reserve
    svc.engine.predict("a", CTX, priority="bulk")
    assert wire.budget_s == pytest.approx(20e-3 - 30e-6)
    assert redis_up.proc is not None
    redis_up.proc.send_signal(signal.SIGSTOP)
    try:
        # A stalled Redis costs the critical request its budget, not the 200 ms timeout.
        d = svc.engine.predict("zz", CTX, priority="critical")
        assert d.flag & UNFED and br.failures == 1
        with pytest.raises(FeatureStoreUnavailable, match=r"no complete reply within 0\.00047 s"):
            svc.online.store.fetch_values(  # type: ignore[union-attr]
                remote(svc)._parts[0].views, [b"tg:none"])
        # A request whose deadline has already passed does not read, and says nothing about the store.
        d = svc.engine.predict("zy", CTX, deadline_ns=clock.now_ns() - 1)
        assert d.flag & UNFED and br.failures == 1 and br.state is BreakerState.CLOSED
    finally:
        redis_up.proc.send_signal(signal.SIGCONT)


def test_a_server_caps_every_read_at_the_tightest_class_budget(load: Loader) -> None:
    import asyncio

    from tailguard.serve.app import App, ServeConfig

    svc = load()
    loop = asyncio.new_event_loop()
    try:
        App(svc, ServeConfig(calibrate=False, dashboard_interval_s=0), loop)
        # One engine thread serves every class: a bulk read (20 ms budget) may wait no longer than
        # the critical budget (500 µs, less the ladder's reserve), or critical requests queued
        # behind it would wait with it.
        assert remote(svc).read_cap_ns == 500_000 - 30_000
        svc.engine.predict("a", CTX, priority="bulk")
        assert svc.online.store._wire().budget_s == pytest.approx(470e-6)  # type: ignore[union-attr]
        remote(svc).read_cap_ns = None
        App(svc, ServeConfig(calibrate=False, dashboard_interval_s=0, online_read_cap=False), loop)
        assert remote(svc).read_cap_ns is None
    finally:
        loop.close()
