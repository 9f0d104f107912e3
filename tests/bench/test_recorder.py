"""Per-class accounting: latency from the intended time, lateness, goodput, statuses, shape."""

from __future__ import annotations

import json

import pytest
from hdrh.histogram import HdrHistogram
from hypothesis import given
from hypothesis import strategies as st

from tailguard.bench.mix import parse_budgets, parse_mix
from tailguard.bench.recorder import (
    CONNECTION_LOST,
    HTTP_BASE,
    NO_REPLY,
    Buffered,
    Recorder,
    is_shed,
    status_name,
)
from tailguard.schema.wire import Status

US = 1_000


def recorder(record_from_ns: int = 0) -> Recorder:
    mix = parse_mix("critical=0.25,bulk=0.75", parse_budgets("critical=300us,bulk=20ms"))
    return Recorder(mix, record_from_ns=record_from_ns)


def test_latency_is_measured_from_the_intended_time_not_the_send() -> None:
    r = recorder()
    # Due at 0, sent 400 us late, answered 100 us after the send: 500 us, not 100 us.
    r.on_send(0, 0, 400 * US)
    r.on_reply(0, 0, 0, 400 * US, 500 * US)
    c = r.report(1.0)["classes"]["critical"]
    assert c["latency_us"]["p50"] == pytest.approx(500, rel=1e-3)
    assert c["late"] == 1 and c["late_sent"] == 0 and c["good"] == 0 and c["ok"] == 1
    assert r.report(1.0)["send_lag_us"]["max"] == pytest.approx(400, rel=1e-3)


def test_ok_within_budget_is_goodput_per_second_of_the_window() -> None:
    r = recorder()
    for i in range(10):
        r.on_send(1, i * 1000 * US, i * 1000 * US)
        r.on_reply(1, 0, i * 1000 * US, i * 1000 * US, i * 1000 * US + 50 * US)
    rep = r.report(2.0)
    assert rep["classes"]["bulk"]["good"] == 10
    assert rep["classes"]["bulk"]["goodput_rps"] == 5.0
    assert rep["goodput_rps"] == 5.0 and rep["throughput_rps"] == 5.0


def test_sheds_and_errors_are_counted_by_status_name_and_kept_out_of_latency() -> None:
    r = recorder()
    r.on_reply(1, Status.QUEUE_FULL, 0, 0, 10 * US)
    r.on_reply(1, Status.SHED_OVERLOAD, 0, 0, 10 * US)
    r.on_reply(1, Status.MODEL_ERROR, 0, 0, 10 * US)
    r.on_reply(1, NO_REPLY, 0, 0, 10 * US)
    rep = r.report(1.0)
    b = rep["classes"]["bulk"]
    assert b["statuses"] == {"no_reply": 1, "queue_full": 1, "shed_overload": 1, "model_error": 1}
    assert (b["shed"], b["errors"], b["ok"], b["replies"]) == (2, 2, 0, 3)
    assert b["latency_us"]["n"] == 0 and b["latency_us"]["p50"] is None
    assert rep["shed"] == 2 and rep["errors"] == 2


def test_a_late_shed_counts_as_late() -> None:
    r = recorder()
    r.on_reply(0, Status.EXPIRED, 0, 0, 400 * US)
    assert r.report(1.0)["classes"]["critical"]["late"] == 1


def test_a_class_without_budget_is_never_late() -> None:
    r = Recorder(parse_mix("bulk"))
    r.on_reply(0, 0, 0, 0, 10_000_000 * US)
    c = r.report(1.0)["classes"]["bulk"]
    assert c["late"] == 0 and c["good"] == 1 and c["budget_us"] is None


def test_requests_intended_during_the_warmup_are_not_recorded() -> None:
    r = recorder(record_from_ns=1000 * US)
    r.on_send(0, 999 * US, 999 * US)
    r.on_reply(0, 0, 999 * US, 999 * US, 1100 * US)
    r.on_send(0, 1000 * US, 1000 * US)
    r.on_reply(0, 0, 1000 * US, 1000 * US, 1100 * US)
    c = r.report(1.0)["classes"]["critical"]
    assert c["sent"] == 1 and c["ok"] == 1


def test_percentiles_cover_the_tail() -> None:
    r = Recorder(parse_mix("bulk"))
    for i in range(1, 10_001):
        r.on_reply(0, 0, 0, 0, i * US)
    lat = r.report(1.0)["latency_us"]
    assert lat["p50"] == pytest.approx(5000, rel=2e-3)
    assert lat["p99"] == pytest.approx(9900, rel=2e-3)
    assert lat["p999"] == pytest.approx(9990, rel=2e-3)
    assert lat["p9999"] == pytest.approx(9999, rel=2e-3)
    assert lat["max"] == pytest.approx(10_000, rel=2e-3)


def test_the_report_has_a_stable_json_shape() -> None:
    r = recorder()
    r.on_send(0, 0, 0)
    r.on_reply(0, 0, 0, 0, 100 * US)
    rep = r.report(1.0)
    json.dumps(rep)  # JSON-ready
    assert set(rep) == {"sent", "replies", "ok", "good", "late", "late_sent", "shed", "errors", "statuses",
                        "throughput_rps", "goodput_rps", "latency_us", "server_us", "send_lag_us", "classes"}
    assert list(rep["classes"]) == ["critical", "bulk"]
    assert set(rep["classes"]["critical"]) == {
        "weight", "budget_us", "sent", "replies", "ok", "good", "late", "late_sent", "shed", "errors",
        "statuses", "goodput_rps", "latency_us", "server_us"}
    assert set(rep["latency_us"]) == {"n", "mean", "p50", "p90", "p99", "p999", "p9999", "max"}
    assert rep["classes"]["critical"]["budget_us"] == 300.0


def test_status_names() -> None:
    assert status_name(0) == "ok" and status_name(Status.QUEUE_FULL) == "queue_full"
    assert status_name(NO_REPLY) == "no_reply" and status_name(CONNECTION_LOST) == "connection_lost"
    assert status_name(HTTP_BASE + 503) == "http_503" and status_name(99) == "status_99"
    assert is_shed(Status.RATE_LIMITED) and not is_shed(Status.MODEL_ERROR) and not is_shed(0)


def test_the_progress_window_resets() -> None:
    r = recorder()
    assert r.take_window() == (None, None)
    r.on_reply(1, 0, 0, 0, 100 * US)
    r.on_reply(1, 0, 0, 0, 300 * US)
    assert r.take_window() == (200.0, 300.0)
    assert r.take_window() == (None, None)


def test_server_times_are_kept_per_class_after_the_warmup() -> None:
    r = recorder(record_from_ns=10)
    r.on_server_time(0, 5, 999 * US)  # warm-up
    r.on_server_time(0, 10, 40 * US)
    r.on_server_time(1, 10, 60 * US)
    rep = r.report(1.0)
    assert rep["classes"]["critical"]["server_us"]["n"] == 1
    assert rep["classes"]["critical"]["server_us"]["max"] == pytest.approx(40, rel=1e-2)
    assert rep["server_us"]["n"] == 2


@given(st.lists(st.integers(-5, 700 * 10**9), min_size=1, max_size=300), st.integers(1, 64))
def test_the_buffered_histogram_equals_recording_each_value(values: list[int], fold_at: int) -> None:
    direct = HdrHistogram(1, 600 * 10**9, 3)
    for v in values:
        direct.record_value(min(max(v, 1), 600 * 10**9))
    b = Buffered(fold_at)
    for v in values:
        b.add(v)
    h = b.histogram()
    assert h.get_total_count() == direct.get_total_count()
    for q in (0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 100.0):
        assert h.get_value_at_percentile(q) == direct.get_value_at_percentile(q)
    assert h.get_max_value() == direct.get_max_value() and h.get_min_value() == direct.get_min_value()
