"""The drift monitor on a loaded service: decisions copied on the reply path, windows scored
on the side path (equal to the reference's scores of exactly the decided rows), alerts with
hysteresis, change detectors, delayed labels, a full ring dropping (counted), and the
monitor drained by ``Service.run_side_path``."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alertkit import ListSink
from toyservice import CTX, feed

import tailguard.observe.drift as drift_module
from tailguard import Service
from tailguard.audit.log import AuditLog
from tailguard.observe.drift import DriftMonitor
from tailguard.observe.reference import DriftError, DriftReferenceError, Reference
from tailguard.observe.reference_data import build_service_reference
from tailguard.spec import DriftSpec, DriftThreshold
from tailguard.testing import FakeClock

pytest.importorskip("river")

KEYS = [f"k{i}" for i in range(20)]


class Traffic:
    """Seeded single decisions; ``shift`` moves the quoted price (order.notional, prediction)."""

    def __init__(self, service: Service, seed: int) -> None:
        self.service = service
        self.rng = np.random.default_rng(seed)
        self.rows: list[np.ndarray] = []
        self.outputs: list[np.ndarray] = []

    def run(self, n: int, shift: float = 0.0) -> None:
        engine, rng = self.service.engine, self.rng
        for _ in range(n):
            key = KEYS[int(rng.integers(len(KEYS)))]
            ctx = {"price": float(rng.uniform(95.0, 115.0)) + shift, "size": float(rng.uniform(1.0, 10.0))}
            d = engine.predict(key, ctx)
            self.rows.append(engine.last_features(1)[0].copy())
            self.outputs.append(d.outputs.astype(np.float32))

    def matrix(self) -> np.ndarray:
        return np.hstack([np.array(self.rows), np.array(self.outputs)])


@pytest.fixture
def live(service: Service) -> Service:
    """The toy service with a few entities fed (their stats differ)."""
    rng = np.random.default_rng(0)
    for key in KEYS:
        feed(service, key, rng.uniform(95.0, 115.0, 3).tolist(), size=float(rng.uniform(1.0, 10.0)))
    return service


@pytest.fixture
def ref(live: Service) -> Reference:
    """A reference built from 4000 seeded decisions' feature rows (the primary model's answers)."""
    t = Traffic(live, seed=100)
    t.run(4000)
    return build_service_reference(live, np.array(t.rows), live.engine.assembler.columns)


def monitor(service: Service, ref: Reference, clock: FakeClock | None = None, sinks: Any = (),
            **spec: Any) -> DriftMonitor:
    spec.setdefault("window_interval", None)
    m = DriftMonitor(ref, DriftSpec(**spec), engine=service.engine, clock=clock, sinks=sinks, service="toy")
    service.attach(m)
    return m


# -- windows and scores ---------------------------------------------------------------------------
def test_a_window_scores_exactly_the_decided_rows(live: Service, ref: Reference) -> None:
    m = monitor(live, ref, window=300, min_window=10)
    t = Traffic(live, seed=1)
    t.run(300)
    assert m.queued_rows == 300
    live.run_side_path()
    psi, ks = ref.scores(t.matrix())
    scores = m.drift_scores()
    for i, name in enumerate(ref.names):
        assert scores[f"psi:{name}"] == pytest.approx(psi[i], abs=1e-12)
        assert scores[f"ks:{name}"] == pytest.approx(ks[i], abs=1e-12)
    assert m.windows == 1 and m.statistics()["recorded_rows"] == 300


def test_scoring_in_small_steps_equals_scoring_at_once(live: Service, ref: Reference,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    whole = monitor(live, ref, window=200, min_window=10)
    stepped = monitor(live, ref, window=200, min_window=10)
    Traffic(live, seed=2).run(400)
    whole.drain(None)
    monkeypatch.setattr(drift_module, "STEP_NS", 1)  # one signal per step
    for _ in range(10_000):
        stepped.drain(1)
        if stepped.windows == 2 and len(stepped.drift_scores()) == len(whole.drift_scores()) \
                and stepped._job is None:
            break
    assert stepped.drift_scores() == whole.drift_scores()


def test_batches_count_row_by_row_and_fallback_answers_are_not_predictions(live: Service,
                                                                            ref: Reference) -> None:
    m = monitor(live, ref, window=100, min_window=10)
    engine = live.engine
    served = engine.predict_batch(KEYS * 2 + KEYS[:10], CTX)
    rows = engine.last_features(50).copy()
    engine.predict_batch(KEYS * 2 + KEYS[:10], CTX, start_rung=1)  # the fast rung answers
    live.run_side_path()
    window = np.vstack([np.hstack([rows, served.outputs]), np.hstack([rows, np.full((50, 1), np.nan)])])
    psi, ks = ref.scores(window)
    scores = m.drift_scores()
    assert scores["psi:order.notional"] == pytest.approx(psi[3])
    # The prediction signal sees only the 50 rows the monitored (primary) model answered.
    assert scores["ks:prediction.p"] == pytest.approx(ks[5])
    assert ks[5] == pytest.approx(ref.scores(np.hstack([rows, served.outputs]))[1][5])


def test_a_window_closes_after_window_interval_on_the_injected_clock(live: Service, ref: Reference,
                                                                    clock: FakeClock) -> None:
    m = monitor(live, ref, clock, window=1000, window_interval=5.0, min_window=20)
    Traffic(live, seed=3).run(30)
    live.run_side_path()
    assert m.windows == 0 and m.statistics()["window_rows"] == 30
    clock.advance(4.9)
    live.run_side_path()
    assert m.windows == 0
    clock.advance(0.1)
    live.run_side_path()
    assert m.windows == 1 and "psi:order.ratio" in m.drift_scores()


def test_a_short_window_waits_for_min_window(live: Service, ref: Reference, clock: FakeClock) -> None:
    m = monitor(live, ref, clock, window=1000, window_interval=1.0, min_window=50)
    Traffic(live, seed=3).run(30)
    live.run_side_path()  # the window starts when the side path takes its first rows
    clock.advance(10.0)
    live.run_side_path()
    assert m.windows == 0  # the interval is over, but 30 rows are too few
    Traffic(live, seed=4).run(20)
    live.run_side_path()
    assert m.windows == 1


# -- alerts ---------------------------------------------------------------------------------------
def test_shifted_traffic_alerts_after_enter_windows_and_clears_after_exit_windows(
        live: Service, ref: Reference, clock: FakeClock) -> None:
    sink = ListSink()
    m = monitor(live, ref, clock, [sink], window=500, min_window=10, detectors=(),
                psi=DriftThreshold(alert=0.25, clear=0.1, enter_windows=2, exit_windows=2))
    t = Traffic(live, seed=5)
    signal = "psi:order.notional"
    t.run(1000)
    live.run_side_path()
    assert sink.of(signal) == [] and m.drift_scores()[signal] < 0.1
    t.run(500, shift=30.0)
    live.run_side_path()
    assert m.drift_scores()[signal] > 0.25 and sink.of(signal) == []  # one window over: pending
    clock.advance(60.0)
    t.run(500, shift=30.0)
    live.run_side_path()
    assert sink.of(signal) == ["alert"]
    alert = next(e for e in sink.events if e.signal == signal)
    assert alert.window == 3 and alert.wall_ns == clock.wall_ns() and alert.service == "toy"
    assert signal in m.statistics()["alerts"]["active"]
    t.run(500)
    live.run_side_path()
    assert sink.of(signal) == ["alert"]  # one window under clear: recovering
    t.run(500)
    live.run_side_path()
    assert sink.of(signal) == ["alert", "clear"]
    m.close()
    assert sink.closed


def test_detectors_on_predictions_fire_on_a_shift_only(live: Service, ref: Reference) -> None:
    sink = ListSink()
    m = monitor(live, ref, None, [sink], window=500, min_window=10, detectors=("adwin", "page_hinkley"))
    t = Traffic(live, seed=6)
    t.run(3000)
    live.run_side_path()
    det = m.statistics()["detectors"]
    assert det["adwin:prediction"]["detections"] == 0 and det["page_hinkley:prediction"]["detections"] == 0
    rng = np.random.default_rng(1)
    for key in KEYS:  # the entities' prices fall: the model's answers drop
        feed(live, key, (rng.uniform(95.0, 115.0, 3) - 10.0).tolist(), size=float(rng.uniform(1.0, 10.0)))
    t.run(1500)
    live.run_side_path()
    det = m.statistics()["detectors"]
    assert det["adwin:prediction"]["detections"] >= 1 and det["page_hinkley:prediction"]["detections"] >= 1
    assert det["adwin:prediction"]["observed"] == 4500
    assert sink.of("adwin:prediction")[:1] == ["alert"]


# -- delayed labels -------------------------------------------------------------------------------
def test_labels_are_matched_to_their_predictions(live: Service, ref: Reference, clock: FakeClock) -> None:
    m = monitor(live, ref, clock, window=10, min_window=10, labels=True)
    engine = live.engine
    preds = []
    for key in ("a", "b", "a"):
        preds.append(engine.predict(key, CTX).output("p"))
        clock.advance(1.0)
    decided = clock.now_ns() - 1_000_000_000  # the second "a" decision
    m.observe_label("a", 1.0)  # the oldest unlabelled "a"
    m.observe_label("a", 0.0, decided_ns=decided)  # the "a" in force at that time
    m.observe_label("b", 1.0, prediction=0.25)  # an explicit prediction
    m.observe_label("zzz", 1.0)  # nothing to match
    live.run_side_path()
    assert (m.labels_matched, m.labels_unmatched) == (3, 1)
    Traffic(live, seed=7).run(10)  # closes the window: the mean error is published
    live.run_side_path()
    want = np.mean([abs(1.0 - preds[0]), abs(0.0 - preds[2]), 0.75])
    assert m.drift_scores()["error:mean"] == pytest.approx(want)
    labels = m.statistics()["labels"]
    assert labels["matched"] == 3 and labels["unmatched"] == 1 and labels["pending"] == 11


def test_a_batch_decision_labels_row_by_row(live: Service, ref: Reference) -> None:
    m = monitor(live, ref, window=100, min_window=10, labels=True)
    d = live.engine.predict_batch(["x", "y"], CTX)
    m.observe_label("y", 0.0)
    m.observe_label({"item": "x"}, 1.0)  # a mapping key is the same key
    live.run_side_path()
    assert m.labels_matched == 1 and m.labels_unmatched == 1  # batch keys are plain; x as a mapping differs
    assert m._err_sum == pytest.approx(d.outputs[1, 0])


def test_label_errors_feed_the_error_detector(live: Service, ref: Reference) -> None:
    m = monitor(live, ref, window=500, min_window=10, labels=True, label_capacity=10_000)
    rng = np.random.default_rng(8)
    got = threading.Event()

    def labeller(values: list[tuple[str, float]]) -> None:  # labels arrive from another thread
        for key, label in values:
            m.observe_label(key, label)
        got.set()

    for phase in ("good", "bad"):
        batch = []
        for _ in range(1500):
            key = KEYS[int(rng.integers(len(KEYS)))]
            p = live.engine.predict(key, CTX).output("p")
            good = float(rng.random() < p)  # labels that agree with a calibrated model
            batch.append((key, good if phase == "good" else 1.0 - round(p)))
        got.clear()
        worker = threading.Thread(target=labeller, args=(batch,))
        worker.start()
        worker.join()
        assert got.is_set()
        live.run_side_path()
        if phase == "good":
            assert m.statistics()["detectors"]["adwin:error"]["detections"] == 0
    assert m.labels_matched == 3000
    assert m.statistics()["detectors"]["adwin:error"]["detections"] >= 1


def test_labels_beyond_the_queue_are_dropped_and_counted(live: Service, ref: Reference) -> None:
    m = monitor(live, ref, window=100, min_window=10, labels=True, label_capacity=3)
    for i in range(5):
        m.observe_label(f"k{i}", 1.0)
    assert m.labels_dropped == 2
    live.run_side_path()
    assert m.statistics()["labels"]["dropped"] == 2 and m.labels_unmatched == 3


# -- bounded intake -------------------------------------------------------------------------------
def test_a_full_ring_drops_decisions_and_counts_them(live: Service, ref: Reference) -> None:
    # Used on its own (an engine hook, not attached): the ring copies on the reply path.
    m = DriftMonitor(ref, DriftSpec(window=1000, min_window=10, window_interval=None, capacity=64),
                     engine=live.engine, service="toy")
    live.engine.set_hooks([*live.engine.hooks, m])
    live.side_tasks.append(m)
    assert m.capacity == 64
    Traffic(live, seed=9).run(100)  # no side path in between: 36 do not fit
    live.engine.predict_batch(KEYS, CTX)
    s = m.statistics()
    assert (s["dropped_rows"], s["dropped_decisions"], s["queued_rows"]) == (56, 37, 64)
    live.run_side_path()
    assert m.statistics()["recorded_rows"] == 64 and m.queued_rows == 0
    live.engine.predict_batch(KEYS, CTX)  # room again
    assert m.queued_rows == 20


def test_attached_it_reads_the_shared_tap_and_drops_what_its_ring_cannot_hold(
        live: Service, ref: Reference, tmp_path: Path) -> None:
    hooks_before = len(live.engine.hooks)
    m = monitor(live, ref, window=1000, min_window=10, capacity=64)
    log = AuditLog.for_service(live, tmp_path / "audit", bytes(32))
    live.attach(log)
    # One hook for all: the service's tap (the drift monitor, the log and the latency recorder,
    # which was a hook of its own before, only read it).
    assert hooks_before == 1 and live.engine.hooks == (live.decision_tap(),)
    Traffic(live, seed=9).run(100)
    live.engine.predict_batch(KEYS, CTX)
    assert m.queued_rows == 120 and log.pending == 101  # still in the tap
    m.drain(0)  # the pull: 64 rows fit, 36 singles and the batch of 20 do not
    s = m.statistics()
    assert (s["dropped_rows"], s["dropped_decisions"]) == (56, 37)
    live.run_side_path()
    assert m.statistics()["recorded_rows"] == 64 and m.queued_rows == 0
    assert log.pending == 0 and log.written == 101  # the log lost nothing to the drift's ring


def test_record_queues_rows_without_an_engine(ref: Reference) -> None:
    m = DriftMonitor(ref, DriftSpec(window=50, min_window=10, window_interval=None, detectors=()))
    rows = np.tile(ref.signal_sample(0)[:50, None], (1, ref.n_features)).astype(np.float32)
    out = np.full((50, 1), 0.5, dtype=np.float32)
    assert m.record(rows, out)
    out[:] = 9.0  # the caller's buffer is reused: the queued rows keep their values
    m.drain()
    assert m.drift_scores()["ks:prediction.p"] == pytest.approx(ref.scores(np.hstack([rows, np.full(
        (50, 1), 0.5, np.float32)]))[1][-1])


# -- the side path --------------------------------------------------------------------------------
@pytest.mark.parametrize("budget_s", [None, 0.05])
def test_run_side_path_drains_the_attached_monitor(live: Service, ref: Reference,
                                                   budget_s: float | None) -> None:
    m = monitor(live, ref, window=100, min_window=10)
    assert m in live.side_tasks and live.decision_tap() in live.engine.hooks and m not in live.engine.hooks
    Traffic(live, seed=10).run(250)
    assert m.queued_rows == 250
    done = 0
    for _ in range(1000):  # a budgeted pass may leave work for the next one
        done += live.run_side_path(budget_s)
        if m.queued_rows == 0 and m._job is None:
            break
    assert done >= 250 and m.queued_rows == 0 and m.windows == 2
    assert m.statistics()["window_rows"] == 50


def test_close_scores_the_last_window_and_closes_sinks(live: Service, ref: Reference) -> None:
    sink = ListSink()
    m = monitor(live, ref, None, [sink], window=1000, min_window=40)
    Traffic(live, seed=11).run(60)
    live.close()
    assert m.windows == 1 and sink.closed and "ks:order.notional" in m.drift_scores()


# -- building a monitor ---------------------------------------------------------------------------
def test_an_unknown_output_is_refused(live: Service, ref: Reference) -> None:
    with pytest.raises(DriftError, match="output 'q'"):
        DriftMonitor(ref, DriftSpec(output="q"), engine=live.engine)


def test_a_reference_for_other_columns_is_refused(live: Service, ref: Reference) -> None:
    other = Reference.build(np.zeros((20, 3), np.float32), ("stats.price_ewm", "x.y", "prediction.p"), 2)
    with pytest.raises(DriftReferenceError, match=r"missing \['order.notional'"):
        DriftMonitor(other, engine=live.engine)
    outputs = Reference.build(np.zeros((20, 6), np.float32), (*ref.names[:5], "prediction.q"), 5)
    with pytest.raises(DriftReferenceError, match="outputs"):
        DriftMonitor(outputs, DriftSpec(output="q"), engine=live.engine)


def test_from_spec_refuses_a_reference_on_other_feature_versions(live: Service, ref: Reference,
                                                                 tmp_path: Path) -> None:
    stale = Reference(ref.names, ref.n_features, ref.edges, ref.edge_offsets, ref.proportions, ref.sample,
                      ref.sample_offsets, ref.mean, ref.std,
                      {**ref.meta, "feature_versions": {"stats": "0000"}})
    path = stale.save(tmp_path / "stale.npz")
    with pytest.raises(DriftReferenceError, match="other feature view versions"):
        DriftMonitor.from_spec(live, DriftSpec(reference=str(path)), sinks=[])
    with pytest.raises(DriftReferenceError, match="tailguard drift reference"):
        DriftMonitor.from_spec(live, DriftSpec(reference=str(tmp_path / "none.npz")), sinks=[])
    ok = DriftMonitor.from_spec(live, DriftSpec(reference=str(ref.save(tmp_path / "ok.npz"))), sinks=[])
    assert ok.reference.meta["model"] == "primary/1"


def test_a_budgeted_drain_scores_as_many_signals_as_its_budget_allows(live: Service, ref: Reference) -> None:
    m = monitor(live, ref, window=200, min_window=10)
    Traffic(live, seed=3).run(200)
    for _ in range(10_000):  # rows in, until the full window closes and its scoring starts
        m.drain(1)
        if m._job is not None:
            break
    job = m._job
    assert job is not None and job.next <= 1
    seen = [job.next]
    while m._job is job:
        m.drain(1)  # a 1 ns budget: one signal per step, however fast the last one was
        seen.append(job.next)
    assert seen == list(range(seen[0], len(ref.names) + 1))
    assert m.windows == 1 and len(m.drift_scores()) >= 2 * len(ref.names)
