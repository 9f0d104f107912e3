"""The dashboard sampler: points per interval on an injected clock, percentiles of the interval
(not cumulative), rates from counters, bounded steps, the ring and ``since``."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from toyservice import CTX

from tailguard import Service
from tailguard.errors import ValidationError
from tailguard.observe.dashboard import DashboardSampler, dashboard_page, parse_since
from tailguard.observe.latency import StageHistograms
from tailguard.testing import FakeClock

TWO = ("queue", "server_total")


def points(sampler: DashboardSampler, since: float | None = None) -> list[dict[str, Any]]:
    pts: list[dict[str, Any]] = json.loads(sampler.data(since))["points"]
    return pts


def tick(sampler: DashboardSampler, clock: FakeClock, seconds: float = 1.0) -> None:
    clock.advance(seconds)
    sampler.drain(None)


def decide(service: Service, n: int) -> None:
    for i in range(n):
        service.engine.predict(f"k{i}", CTX)


def test_no_point_before_the_interval_has_passed(service: Service, clock: FakeClock) -> None:
    s = DashboardSampler(service, interval_s=1.0)
    decide(service, 3)
    clock.advance(0.999)
    assert s.drain(None) == 0
    assert points(s) == []
    tick(s, clock, 0.001)
    assert len(points(s)) == 1


def test_each_point_counts_only_its_own_interval(service: Service, clock: FakeClock) -> None:
    s = DashboardSampler(service)
    decide(service, 10)
    service.run_side_path()  # the latency recorder folds its timings in on the side path
    tick(s, clock)
    decide(service, 4)
    service.run_side_path()
    tick(s, clock)
    first, second = points(s)
    assert {row[0] for row in first["stages"].values()} == {10.0}
    assert {row[0] for row in second["stages"].values()} == {4.0}
    assert first["rps"]["engine"] == pytest.approx(10.0) and second["rps"]["engine"] == pytest.approx(4.0)
    assert second["rungs"]["primary"] == pytest.approx(4.0)


def test_class_percentiles_are_those_of_the_interval(service: Service, clock: FakeClock) -> None:
    h = StageHistograms(TWO)
    s = DashboardSampler(service, classes=[("critical", h)])
    h.record_many([(0, 1_000)] * 100)  # 1 µs
    tick(s, clock)
    h.record_many([(0, 2_000_000)] * 100)  # 2 ms: a cumulative view would put p50 at 1 µs
    tick(s, clock, 2.0)
    first, second = points(s)
    assert first["classes"]["critical"] == [100.0, 1.0, 1.0, 1.0]
    n, p50, p99, p999 = second["classes"]["critical"]
    assert n == 100 and p50 == p99 == p999 == pytest.approx(2000.0, rel=1e-3)
    assert second["rps"]["critical"] == pytest.approx(50.0)  # 100 over 2 s
    assert second["dt_s"] == pytest.approx(2.0)


def test_an_idle_interval_reports_zero_not_the_past(service: Service, clock: FakeClock) -> None:
    h = StageHistograms(TWO)
    s = DashboardSampler(service, classes=[("bulk", h)])
    h.record_many([(0, 5_000)] * 10)
    tick(s, clock)
    tick(s, clock)
    assert [p["classes"]["bulk"][0] for p in points(s)] == [10.0, 0.0]


def test_a_reset_histogram_starts_a_new_count(service: Service, clock: FakeClock) -> None:
    h = StageHistograms(TWO)
    s = DashboardSampler(service, classes=[("normal", h)])
    h.record_many([(0, 9_000_000)] * 50)
    tick(s, clock)
    h.reset()
    h.record_many([(0, 3_000)] * 7)
    tick(s, clock)
    assert points(s)[-1]["classes"]["normal"][:2] == [7.0, 3.0]


def test_scheduler_counters_become_rates_and_depths(service: Service, clock: FakeClock) -> None:
    stats: dict[str, Any] = {"queued": {"critical": 2, "bulk": 0}, "rejected": {"queue_full": {"bulk": 3}},
                             "shed": {}, "degraded": {}, "submitted": {"critical": 5, "bulk": 0}}
    s = DashboardSampler(service, interval_s=0.5, scheduler_stats=lambda: stats,
                         classes=[("critical", StageHistograms(TWO)), ("bulk", StageHistograms(TWO))])
    stats["rejected"] = {"queue_full": {"bulk": 13, "critical": 2}}
    stats["shed"] = {"expired": {"normal": 4}}
    stats["submitted"] = {"critical": 15, "bulk": 0}
    tick(s, clock, 0.5)
    p = points(s)[0]
    assert p["queued"] == {"critical": 2, "bulk": 0}
    assert p["rps"]["critical"] == pytest.approx(20.0) and p["rps"]["bulk"] == 0  # arrivals at the door
    assert p["events"] == {"rejected:queue_full": pytest.approx(24.0), "shed:expired": pytest.approx(8.0)}


def test_drift_scores_show_when_a_monitor_is_attached(service: Service, clock: FakeClock) -> None:
    s = DashboardSampler(service)
    assert s.info().drift is False

    class Monitor:
        def drain(self, budget_ns: int | None = None) -> int:
            return 0

        def close(self) -> None:
            return None

        def drift_scores(self) -> dict[str, float]:
            return {"psi:spread": 0.31}

    service.attach(Monitor())
    tick(s, clock)
    assert points(s)[0]["drift"] == {"psi:spread": pytest.approx(0.31)}
    assert s.info().drift is True


def test_the_header_names_the_service_and_its_model_versions(service: Service, clock: FakeClock) -> None:
    h = StageHistograms(TWO)
    s = DashboardSampler(service, interval_s=0.5, capacity=10, classes=[("critical", h)],
                         state=lambda: "ready")
    info = s.info()
    assert (info.service, info.state, info.interval_s, info.capacity) == ("toy", "ready", 0.5, 10)
    assert info.versions == {"primary": "primary/1", "fast": "fast/1"}
    assert info.classes == ["critical"] and info.stages[-1] == "total"


def test_the_ring_keeps_the_last_points_and_since_filters(service: Service, clock: FakeClock) -> None:
    s = DashboardSampler(service, capacity=3)
    for _ in range(5):
        tick(s, clock)
    ts = [p["t"] for p in points(s)]
    assert len(ts) == 3 and ts == sorted(ts)
    assert [p["t"] for p in points(s, since=ts[0])] == ts[1:]
    assert points(s, since=ts[-1]) == []
    assert s.statistics()["samples"] == 5


def test_a_budgeted_drain_samples_in_steps_stamped_at_the_start(service: Service, clock: FakeClock) -> None:
    h = StageHistograms(TWO)
    s = DashboardSampler(service, classes=[("critical", h), ("bulk", h)])
    clock.advance(1.0)
    start = clock.now_ns() / 1e9
    steps = 0
    while True:
        done = s.drain(0)  # a zero budget: one step per call
        steps += 1
        assert done == 1
        if not s.statistics()["sampling"]:
            break
        clock.advance(0.01)  # side-path ticks pass while the sample is in progress
    # The engine recorder's fold, its one + batch copies, five stages, two classes, then
    # counters, the point, publishing.
    assert steps == 1 + 2 + 5 + 2 + 3
    assert [p["t"] for p in points(s)] == [start]


def test_a_closed_sampler_takes_no_more_points(service: Service, clock: FakeClock) -> None:
    s = DashboardSampler(service)
    service.attach(s)
    service.close()
    tick(s, clock)
    assert points(s) == [] and s.closed


def test_bad_settings_are_refused(service: Service) -> None:
    with pytest.raises(ValueError, match="interval_s"):
        DashboardSampler(service, interval_s=0)


@pytest.mark.parametrize(("query", "since"), [("", None), ("since=12.5", 12.5), ("a=1&since=3", 3.0),
                                              ("since=", None)])
def test_since_is_read_from_the_query(query: str, since: float | None) -> None:
    assert parse_since(query) == since


@pytest.mark.parametrize("value", ["abc", "nan"])
def test_a_bad_since_names_the_field(value: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_since(f"since={value}")
    assert err.value.code == "invalid_request" and err.value.field == "since"


def test_the_page_is_self_contained() -> None:
    page = dashboard_page().decode()
    assert "<canvas>" in page and "dashboard/data" in page
    for remote in ('src="http', "src='http", 'href="http', "@import", "//cdn"):
        assert remote not in page


def test_percentiles_match_the_sorted_values_within_hdr_resolution(service: Service,
                                                                   clock: FakeClock) -> None:
    h = StageHistograms(TWO)
    s = DashboardSampler(service, classes=[("normal", h)])
    values = np.random.default_rng(3).lognormal(11, 1.2, 5000).astype(np.int64) + 1
    h.record_many([(0, int(v)) for v in values])
    tick(s, clock)
    n, p50, p99, p999 = points(s)[0]["classes"]["normal"]
    assert n == 5000
    ordered = np.sort(values)
    for got, q in ((p50, 50), (p99, 99), (p999, 99.9)):
        rank = int(q * 5000 / 100 + 0.5)  # HdrHistogram's rank rule (numpy's rounds 99.9 % up)
        assert got == pytest.approx(ordered[rank - 1] / 1e3, rel=2e-3)
