"""Latency recording: a ring on the reply path, HDR histograms on the side path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hdrh.histogram import HdrHistogram
from hypothesis import given, settings
from hypothesis import strategies as st
from toyservice import CTX

from tailguard import STAGES, BatchDecision, Decision, LatencyRecorder, Service, load_service
from tailguard.observe.latency import StageHistograms, bucket_high, bucket_index
from tailguard.testing import FakeClock, SlowRuntime

PERCENTILES = ("p50_us", "p99_us", "p999_us", "p9999_us", "max_us")


def decision(total_ns: int) -> Decision:
    timings = (total_ns // 10, total_ns // 10, total_ns // 2, total_ns // 10, total_ns)
    return Decision("k", np.zeros(1), ("p",), "m/1", "primary", 0, 0, "normal", timings)  # type: ignore[arg-type]


def batch_decision(total_ns: int) -> BatchDecision:
    return BatchDecision(
        ["k"], np.zeros((1, 1)), ("p",), "m/1", ("primary",), np.zeros(1, dtype=np.int8),
        np.zeros(1, dtype=np.uint8), "normal", (0, 0, total_ns, 0, total_ns),
    )


def test_snapshot_counts_every_decision_per_stage() -> None:
    rec = LatencyRecorder()
    for t in range(1, 101):
        rec.on_decision(decision(t * 1_000))
    summary = rec.snapshot()["predict"]
    assert set(summary) == set(STAGES)
    assert {summary[s]["count"] for s in STAGES} == {100.0}


def test_single_and_batch_decisions_are_kept_apart() -> None:
    rec = LatencyRecorder()
    rec.on_decision(decision(5_000))
    for _ in range(3):
        rec.on_batch(batch_decision(50_000))
    snap = rec.snapshot()
    assert (snap["predict"]["total"]["count"], snap["predict_batch"]["total"]["count"]) == (1.0, 3.0)


_SHARED = LatencyRecorder()


# Few examples: percentile queries on pure-Python HDR histograms cost ~15 ms per stage.
@settings(max_examples=20)
@given(totals=st.lists(st.integers(min_value=0, max_value=10**10), min_size=1, max_size=200))
def test_percentiles_are_ordered_and_within_the_recorded_range(totals: list[int]) -> None:
    rec = _SHARED
    rec.reset()
    for t in totals:
        rec.on_decision(decision(t))
    rec.drain()
    row = rec.one.summary()["total"]
    values = [row[p] for p in PERCENTILES]
    assert values == sorted(values)
    # HDR keeps 3 significant digits; zero durations are recorded as 1 ns.
    assert max(min(totals), 1) / 1e3 * (1 - 1e-3) <= values[0]
    assert values[-1] <= max(max(totals), 1) / 1e3 * (1 + 1e-3)


def test_an_empty_recorder_reports_zero_counts() -> None:
    assert LatencyRecorder().snapshot()["predict"]["total"]["count"] == 0.0


def test_ring_overflow_keeps_the_newest_and_counts_the_dropped() -> None:
    rec = LatencyRecorder(capacity=4)
    for t in range(1, 11):
        rec.on_decision(decision(t * 1_000_000))
    snap = rec.snapshot()
    assert (snap["dropped"], snap["predict"]["total"]["count"]) == (6, 4.0)
    assert snap["predict"]["total"]["p50_us"] >= 7_000 * (1 - 1e-3)


def test_drain_moves_pending_timings_once() -> None:
    rec = LatencyRecorder()
    for _ in range(5):
        rec.on_decision(decision(1_000))
    assert (rec.pending(), rec.drain(), rec.pending(), rec.drain()) == (5, 5, 0, 0)


def test_drain_with_no_time_left_moves_nothing() -> None:
    rec = LatencyRecorder()
    rec.on_decision(decision(1_000))
    assert (rec.drain(budget_ns=0), rec.pending()) == (0, 1)


def test_budgeted_drain_folds_whole_chunks_and_leaves_the_rest() -> None:
    rec = LatencyRecorder(chunk=4)
    for _ in range(10):
        rec.on_decision(decision(1_000))
    assert (rec.drain(budget_ns=10**12), rec.pending()) == (8, 2)
    assert (rec.drain(), rec.pending()) == (2, 0)
    assert rec.snapshot()["predict"]["total"]["count"] == 10.0


def test_timings_of_another_length_are_padded_or_cut() -> None:
    rec = LatencyRecorder(stages=("a", "b", "c"))
    rec.record((5_000,))
    rec.record((1_000, 2_000, 3_000, 4_000))
    rec.record((7_000, 8_000, 9_000))
    snap = rec.snapshot()["predict"]
    assert [snap[s]["count"] for s in ("a", "b", "c")] == [3.0, 3.0, 3.0]
    assert (snap["a"]["max_us"], snap["c"]["max_us"]) == (7.0, 9.0)  # the 4th value was cut
    assert rec.one.value_at_percentile(1, 1.0) == 1  # the padded zero, clamped to 1 ns


def test_reset_forgets_recorded_timings() -> None:
    rec = LatencyRecorder()
    rec.on_decision(decision(1_000))
    rec.reset()
    assert rec.snapshot()["predict"]["total"]["count"] == 0.0


def test_a_loaded_service_records_each_decision(toy_dir: Path) -> None:
    clock = FakeClock()
    svc = load_service(toy_dir, clock=clock, freeze_gc=False)
    m = svc.models["primary"]
    slow = SlowRuntime(m.runtime, clock)
    m.runtime = slow
    for i in range(30):
        slow.delay_s = (i % 7 + 1) * 10e-6
        svc.engine.predict("a", CTX)
    svc.engine.predict_batch(["a", "b"], CTX)
    snap = svc.latency_snapshot()
    assert (snap["predict"]["total"]["count"], snap["predict_batch"]["total"]["count"]) == (30.0, 1.0)
    inference = [snap["predict"]["inference"][p] for p in PERCENTILES]
    assert inference == sorted(inference)


def test_service_side_path_drains_pending_timings(service: Service) -> None:
    service.engine.predict("a", CTX)
    service.engine.predict("a", CTX)
    assert service.latency is not None
    assert (service.run_side_path(), service.latency.pending()) == (2, 0)


def test_service_without_latency_recording_reports_nothing(toy_dir: Path) -> None:
    svc = load_service(toy_dir, clock=FakeClock(), record_latency=False, freeze_gc=False)
    svc.engine.predict("a", CTX)
    assert (svc.latency, svc.latency_snapshot()) == (None, {})


# -- the numpy histogram agrees with HdrHistogram ---------------------------------------------------
@given(st.lists(st.integers(1, 60_000_000_000), min_size=1, max_size=300),
       st.sampled_from([0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0]))
def test_stage_histogram_percentiles_match_hdrhistogram(values: list[int], percentile: float) -> None:
    ref = HdrHistogram(1, 60_000_000_000, 3)
    for v in values:
        ref.record_value(v)
    ours = StageHistograms(("x",))
    ours.record_many([(v,) for v in values])
    got = ours.value_at_percentile(0, percentile)
    expected = ref.get_value_at_percentile(percentile)
    assert ref.values_are_equivalent(got, expected) or got == max(values)


@given(st.integers(1, 60_000_000_000))
def test_every_value_lies_within_its_buckets_bounds(value: int) -> None:
    i = int(bucket_index(np.array([value], dtype=np.int64))[0])
    assert value <= bucket_high(i) and (i == 0 or bucket_high(i - 1) < value)
