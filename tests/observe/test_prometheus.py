"""Prometheus exposition: histogram buckets from the numpy HDR counts, an embedded engine's
families, and a Grafana dashboard that queries only metrics that exist."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from services import RedisServer, require_binary
from toyservice import CTX

from tailguard import Service
from tailguard.observe.latency import StageHistograms
from tailguard.observe.prometheus import LATENCY_BUCKETS_S, histogram_buckets, render
from tailguard.testing import FakeClock

ROOT = Path(__file__).resolve().parents[2]


def hist_of(values: list[int]) -> StageHistograms:
    h = StageHistograms(("x",))
    h.record_many([(v,) for v in values])
    return h


def test_buckets_count_the_values_at_or_below_each_bound() -> None:
    buckets, total = histogram_buckets(hist_of([1_500, 3_000, 2_000_000, 50_000_000]), 0)
    by_le = dict(buckets)
    assert (by_le["1e-06"], by_le["2e-06"], by_le["5e-06"], by_le["0.002"], by_le["0.05"], by_le["+Inf"]) == (
        0, 1, 2, 3, 4, 4)
    assert total == pytest.approx(0.0520045)  # exact sum, seconds


def test_buckets_are_cumulative_and_end_with_inf() -> None:
    buckets, _ = histogram_buckets(hist_of([10, 10_000, 10_000_000, 9_000_000_000]), 0)
    counts = [c for _, c in buckets]
    assert counts == sorted(counts) and buckets[-1] == ("+Inf", 4.0)
    assert len(buckets) == len(LATENCY_BUCKETS_S) + 1


@given(st.lists(st.integers(1, 20_000_000_000), min_size=1, max_size=200))
def test_bucket_counts_match_the_values_within_hdr_resolution(values: list[int]) -> None:
    buckets, _ = histogram_buckets(hist_of(values), 0)
    v = np.array(values)
    for (le, count), bound_s in zip(buckets, LATENCY_BUCKETS_S, strict=False):
        bound = bound_s * 1e9
        assert (v <= bound * (1 - 1e-3)).sum() <= count <= (v <= bound * (1 + 1e-3)).sum(), le


def test_an_embedded_engine_renders_its_decisions(service: Service) -> None:
    for _ in range(7):
        service.engine.predict("a", CTX)
    service.engine.predict_batch(["a", "b"], CTX)
    fams = {f.name: f for f in text_string_to_metric_families(render(service, {"replica": "r1"}).decode())}
    lat = fams["tailguard_stage_latency_seconds"]
    count = {(s.labels["stage"], s.labels["call"]): s.value for s in lat.samples if s.name.endswith("_count")}
    assert count[("total", "predict")] == 7 and count[("total", "predict_batch")] == 1
    assert all(s.labels["replica"] == "r1" for s in lat.samples)
    answered = [s for s in fams["tailguard_rung"].samples if s.labels["outcome"] == "answered"]
    assert sum(s.value for s in answered) == 9  # 7 + 2 rows
    assert {s.labels["model"] for s in fams["tailguard_model_info"].samples} == {"primary", "fast"}


SUFFIXES = {"counter": ("",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exposed_names(text: str) -> set[str]:
    """Every series name a query may use: declared families (even with no sample yet, e.g. no
    reject so far) with their type's suffixes."""
    out = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            out.update(name + s for s in SUFFIXES.get(kind, ("",)))
    return out


def test_the_grafana_dashboard_queries_only_exposed_metrics(toy_dir: Path) -> None:
    from tailguard import load_service
    from tailguard.schema.wire import Request
    from tailguard.serve.app import App, ServeConfig, State
    from tailguard.serve.metrics import render as render_server

    loop = asyncio.new_event_loop()
    app = App(load_service(toy_dir, freeze_gc=False), ServeConfig(calibrate=False), loop)
    app.state = State.READY

    class Sink:
        closed = False

        def deliver(self, reply: object) -> None:
            pass

        def flush(self) -> None:
            pass

    try:
        for i in range(5):
            app.dispatcher.submit(Request(i, "a", CTX, priority="nope" if i == 4 else ""),
                                  app.clock.now_ns(), Sink())
        app.dispatcher.flush()
        names = exposed_names(render_server(app)[0].decode())
    finally:
        app.stop()
        loop.close()
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "tailguard-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queried = {m for e in exprs for m in re.findall(r"tailguard_[a-z_]+", e)}
    assert queried and queried <= names, sorted(queried - names)


def test_feature_ages_are_the_time_since_each_entitys_last_write(service: Service, clock: FakeClock) -> None:
    from toyservice import feed

    feed(service, "a")
    clock.advance(2.0)
    feed(service, "b")
    clock.advance(1.0)  # a: 3 s old, b: 1 s old
    fams = {f.name: f for f in text_string_to_metric_families(render(service).decode())}
    ages = {s.labels["quantile"]: s.value for s in fams["tailguard_feature_age_seconds"].samples
            if s.labels["view"] == "stats"}
    assert ages["1"] == pytest.approx(3.0) and ages["0.5"] == pytest.approx(2.0)
    rows = {s.labels["view"]: s.value for s in fams["tailguard_feature_rows"].samples}
    assert rows == {"stats": 2}  # the request-time view has no stored rows


def test_an_attached_drift_monitors_scores_are_exported(service: Service) -> None:
    class Scores:  # any side task that reports drift scores
        def drift_scores(self) -> dict[str, float]:
            return {"psi:price_ewm": 0.31, "ks:prediction": 0.05}

        def drain(self, budget_ns: int | None = None) -> int:
            return 0

        def close(self) -> None:
            return None

    service.attach(Scores())
    fams = {f.name: f for f in text_string_to_metric_families(render(service).decode())}
    got = {(s.labels["metric"], s.labels["signal"]): s.value for s in fams["tailguard_drift_score"].samples}
    assert got == {("psi", "price_ewm"): 0.31, ("ks", "prediction"): 0.05}


# -- the shared online store (``[online] backend = "redis"``) ------------------------------------
REDIS_ONLINE = """
[online]
backend = "redis"
url = "redis://127.0.0.1:1/0"
timeout = "200ms"
heartbeat = "1h"
"""


def samples(service: Service) -> dict[str, float]:
    """Every sample of ``render(service)`` by name (one label set per name here)."""
    fams = text_string_to_metric_families(render(service).decode())
    return {s.name: s.value for f in fams for s in f.samples}


def breaker_samples(service: Service, breaker: str) -> dict[str, float]:
    """The ``tailguard_breaker_*`` samples of one breaker, by name."""
    fams = text_string_to_metric_families(render(service).decode())
    return {s.name: s.value for f in fams for s in f.samples
            if s.name.startswith("tailguard_breaker_") and s.labels.get("breaker") == breaker}


def wait_for(done: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll a condition the invalidation listener's thread makes true (readiness, not a race fix)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


@pytest.fixture
def redis_service(toy_dir: Path, tmp_path: Path, clock: FakeClock) -> Iterator[tuple[Service, RedisServer]]:
    """The toy service reading its stored view from a redis-server of its own (link up)."""
    from toyservice import render_spec

    from tailguard import load_service

    server = RedisServer(require_binary("redis-server"), tmp_path)
    server.start()
    d = Path(shutil.copytree(toy_dir, tmp_path / "svc"))
    (d / "service.toml").write_text(render_spec() + REDIS_ONLINE)
    svc = load_service(d, clock=clock, freeze_gc=False, online_url=server.url)
    try:
        wait_for(lambda: svc.online.cache.link_up)  # type: ignore[union-attr]
        yield svc, server
    finally:
        svc.close()
        server.stop()


def test_the_remote_feature_counters_are_exported_as_zero_without_a_shared_store(service: Service) -> None:
    got = samples(service)
    assert got["tailguard_engine_features_unavailable_total"] == 0
    assert got["tailguard_engine_features_unconfirmed_total"] == 0
    assert not any(name.startswith("tailguard_online_") for name in got)  # no shared store, no figures


def test_near_cache_hits_misses_and_link_state_are_exported(
    redis_service: tuple[Service, RedisServer],
) -> None:
    from toyservice import feed

    svc, _ = redis_service
    feed(svc, "a")
    svc.online.cache.clear()  # type: ignore[union-attr]  # forget what loading (warm-up) read
    before = samples(svc)
    svc.engine.predict("a", CTX)  # a miss: fetched from Redis, then cached
    svc.engine.predict("a", CTX)  # a hit: proven fresh by the link
    svc.engine.predict_batch(["b", "c"], CTX)  # two more misses, one round trip
    got = samples(svc)
    delta = {k.removeprefix("tailguard_"): got[k] - before[k] for k in got if k.endswith("_total")}
    assert (delta["online_cache_hits_total"], delta["online_cache_misses_total"]) == (1, 3)
    assert delta["online_reads_total"] == 2
    assert got["tailguard_online_cache_entries"] == 3
    assert got["tailguard_online_link_up"] == 1 and got["tailguard_online_link_connects_total"] == 1
    assert got["tailguard_engine_features_unavailable_total"] == 0


def test_redis_down_shows_in_the_link_state_and_the_unavailable_counter(
    redis_service: tuple[Service, RedisServer],
) -> None:
    svc, server = redis_service
    server.stop()
    wait_for(lambda: not svc.online.cache.link_up)  # type: ignore[union-attr]
    before = samples(svc)
    svc.engine.predict("a", CTX)
    svc.engine.predict_batch(["b", "c"], CTX)
    got = samples(svc)
    unavailable = "tailguard_engine_features_unavailable_total"
    assert got[unavailable] - before[unavailable] == 3
    assert got["tailguard_online_link_up"] == 0
    assert got["tailguard_online_errors_total"] - before["tailguard_online_errors_total"] >= 2


def test_feature_ages_of_a_shared_store_are_declared_but_empty_without_a_tap(
    redis_service: tuple[Service, RedisServer],
) -> None:
    from toyservice import feed

    svc, _ = redis_service
    feed(svc, "a")
    svc.engine.predict("a", CTX)
    fams = {f.name: f for f in text_string_to_metric_families(render(svc).decode())}
    # The key index holds no values (they live in Redis): no rows counted as 0, no ages made up.
    assert fams["tailguard_feature_age_seconds"].samples == []
    assert fams["tailguard_feature_rows"].samples == []
    assert getattr(svc, "_tap", None) is None  # a scrape does not install a tap


@pytest.mark.parametrize("keeper", ["tap", "ring"])
def test_feature_ages_of_a_shared_store_are_those_the_last_decisions_read(
    redis_service: tuple[Service, RedisServer], clock: FakeClock, keeper: str
) -> None:
    from toyservice import feed

    svc, _ = redis_service
    if keeper == "tap":
        svc.decision_tap()  # what an attached audit log or drift monitor does
    else:
        svc.decision_ring()  # what a side process does (the records hold the same rows)
    feed(svc, "a")
    clock.advance(1.0)
    feed(svc, "b")
    clock.advance(2.0)  # a: 3 s old, b: 2 s old
    svc.engine.predict("a", CTX)
    svc.engine.predict_batch(["b", "never-written"], CTX)  # an unknown entity has no age
    clock.advance(5.0)  # the ages are those at decision time, not at scrape time
    fams = {f.name: f for f in text_string_to_metric_families(render(svc).decode())}
    ages = {s.labels["quantile"]: s.value for s in fams["tailguard_feature_age_seconds"].samples
            if s.labels["view"] == "stats"}
    assert ages["1"] == pytest.approx(3.0) and ages["0.5"] == pytest.approx(2.5)
    assert fams["tailguard_feature_rows"].samples == []


def test_the_online_breaker_state_and_counters_are_exported(
    redis_service: tuple[Service, RedisServer], clock: FakeClock
) -> None:
    from tailguard.features.remote import online_breaker

    svc, server = redis_service
    assert svc.engine.remote is not None
    svc.engine.remote.breaker = br = online_breaker(svc.spec.online, clock)  # 5 failures in a row open it
    assert breaker_samples(svc, "online")["tailguard_breaker_state"] == 0
    server.stop()
    wait_for(lambda: not svc.online.cache.link_up)  # type: ignore[union-attr]
    for key in ("a", "b", "c", "d", "e", "f", "g"):  # five refused reads, then two short circuits
        svc.engine.predict(key, CTX)
    got = breaker_samples(svc, "online")
    assert got["tailguard_breaker_state"] == 2
    assert (got["tailguard_breaker_opens_total"], got["tailguard_breaker_short_circuited_total"]) == (1, 2)
    assert got["tailguard_breaker_failures_total"] == 5
    assert samples(svc)["tailguard_engine_features_unavailable_total"] == 7
    clock.advance(1.0)
    assert br.allow()  # the open period has passed: a trial is out
    assert breaker_samples(svc, "online")["tailguard_breaker_state"] == 1


def test_without_a_shared_store_only_the_model_breakers_are_exported(service: Service) -> None:
    fams = text_string_to_metric_families(render(service).decode())
    names = {s.labels["breaker"] for f in fams for s in f.samples if s.name == "tailguard_breaker_state"}
    assert names == {"model:primary", "model:fast"}


class Families:
    """A collector of fixed families (a counter, gauges, a histogram), or one that fails at ``fail_at``."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        for i in range(4):
            if i == self.fail_at:
                raise RuntimeError("collector broke")
            g = GaugeMetricFamily(f"t_gauge_{i}", "a gauge", labels=["k"])
            g.add_metric([f"v{i}"], float(i))
            yield g
        c = CounterMetricFamily("t_count", "a counter", labels=["k"])
        c.add_metric(["x"], 7.0)
        yield c
        h = HistogramMetricFamily("t_seconds", "a histogram", labels=["k"])
        for k in range(30):  # 150 samples: formatted in pieces of 40
            h.add_metric([f"x{k}"], [("0.001", 1.0), ("0.01", 3.0 + k), ("+Inf", 4.0 + k)], 0.02 * k)
        yield h
        c2 = CounterMetricFamily("t_after", "a counter after the large family", labels=["k"])
        c2.add_metric(["y"], 1.0)
        yield c2


def test_a_rendering_in_steps_is_the_rendering_at_once() -> None:
    from tailguard.observe.prometheus import Rendering, render_collector

    r = Rendering(Families())
    # budget 0: one piece a step: four gauges, a counter, the histogram's 150 samples in four
    # pieces, a counter, then the end
    outs = [r.step(0) for _ in range(11)]
    assert outs[:10] == [None] * 10 and r.steps == 11
    whole = render_collector(Families())
    assert outs[10] == whole
    assert whole.count(b"# TYPE t_seconds histogram") == 1 and whole.count(b"t_seconds_bucket{") == 90
    r2 = Rendering(Families())
    assert r2.step(10**12) == render_collector(Families()) and r2.steps == 1 and r2.max_step_ns > 0


def fake_exchange() -> object:
    class Ex:
        def __init__(self) -> None:
            self.code, self.body, self.content_type, self.flushed = 0, b"", b"", 0

        def answer(self, code: int, body: bytes, extra: bytes = b"", content_type: bytes = b"") -> None:
            if self.code == 0:
                self.code, self.body, self.content_type = code, body, content_type

        def flush(self) -> None:
            self.flushed += 1

    return Ex()


def test_a_scrape_runs_one_step_per_loop_turn_and_answers_every_scrape_waiting(toy_dir: Path) -> None:
    from tailguard import load_service
    from tailguard.serve.app import App, ServeConfig, State

    loop = asyncio.new_event_loop()
    app = App(load_service(toy_dir, freeze_gc=False), ServeConfig(calibrate=False), loop)
    app.state = State.READY
    app.scrapes.step_ns = 0  # one family a step

    def turn() -> None:  # one turn of the loop: what is ready runs, then it stops (asyncio's stop())
        loop.stop()
        loop.run_forever()

    try:
        first, second = fake_exchange(), fake_exchange()
        app.scrapes.request(first)
        assert first.code == 0  # type: ignore[attr-defined]
        turn()
        rendering = app.scrapes.rendering
        assert rendering is not None and rendering.steps == 1  # the loop got control back after one family
        app.scrapes.request(second)  # joins the rendering under way
        turns = 1
        while first.code == 0 and turns < 1000:  # type: ignore[attr-defined]
            turn()
            turns += 1
        assert turns > 10 and app.scrapes.renderings == 1
        for ex in (first, second):
            assert ex.code == 200 and ex.flushed == 1  # type: ignore[attr-defined]
            assert ex.content_type.startswith(b"text/plain")  # type: ignore[attr-defined]
        names = {f.name for f in text_string_to_metric_families(first.body.decode())}  # type: ignore[attr-defined]
        assert {"tailguard_info", "tailguard_state", "tailguard_server_latency_seconds"} <= names
        assert second.body == first.body  # type: ignore[attr-defined]
        assert app.scrapes.max_step_ns > 0

        app.metrics_registry = Families(fail_at=2)  # a collector that breaks mid-way
        broken = fake_exchange()
        app.scrapes.request(broken)
        for _ in range(10):
            turn()
        assert broken.code == 500 and b"collector broke" in broken.body  # type: ignore[attr-defined]
        assert app.scrapes.rendering is None  # the next scrape starts afresh
    finally:
        app.stop()
        loop.close()
