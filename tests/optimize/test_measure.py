"""Metrics, losses, verdicts, the latency harness's shape and the choice of the best."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from tailguard.models.manifest import Manifest
from tailguard.optimize.candidates import Candidate
from tailguard.optimize.measure import Accuracy, Latency, accuracy, loss, measure_latency, metric_kind
from tailguard.optimize.report import Report, Row, Status, verdict


class Doubler:
    """A runtime stand-in: doubles its first column."""

    kind = "test"
    n_inputs = 2
    n_outputs = 1

    def run(self, x: np.ndarray) -> np.ndarray:
        return 2.0 * x[:, :1].astype(np.float64)


def _manifest(**metrics: float) -> Manifest:
    return Manifest(name="m", version="1", inputs=("a.x",), outputs=("p",), feature_versions={},
                    artifacts=(), metrics=dict(metrics))


def test_metric_is_auc_for_probabilities_of_a_binary_label() -> None:
    y = np.array([0.0, 1.0, 1.0, 0.0])
    assert metric_kind(_manifest(), y, np.array([0.1, 0.9, 0.6, 0.3])) == "auc"
    assert metric_kind(_manifest(), y, np.array([-1.0, 2.0, 0.6, 0.3])) == "mse"
    assert metric_kind(_manifest(), np.array([0.5, 2.0, 1.0, 0.0]), np.array([0.1, 0.9, 0.6, 0.3])) == "mse"
    assert metric_kind(_manifest(mse=1.0), y, np.array([0.1, 0.9, 0.6, 0.3])) == "mse"


def test_loss_is_an_absolute_auc_drop_or_a_relative_mse_increase() -> None:
    assert loss("auc", 0.80, 0.79) == pytest.approx(0.01)
    assert loss("auc", 0.80, 0.81) == pytest.approx(-0.01)
    assert loss("mse", 2.0, 2.5) == pytest.approx(0.25)
    assert math.isnan(loss("auc", 0.8, float("nan")))


def test_accuracy_flags_non_finite_outputs() -> None:
    y = np.array([0.0, 1.0])
    acc = accuracy("auc", y, np.array([0.2, np.nan]), np.array([0.2, 0.7]))
    assert not acc.finite
    assert verdict(acc, float("nan"), 1.0) == (Status.REFUSED, "non-finite outputs")


def test_verdict_refuses_only_over_the_threshold() -> None:
    acc = Accuracy("auc", 0.8, 0.5, 0.01, True)
    assert verdict(acc, 0.005, 0.005)[0] is Status.ACCEPTED
    status, reason = verdict(acc, 0.0051, 0.005)
    assert status is Status.REFUSED and "AUC drop" in reason


def test_latency_has_p50_and_p99_per_batch_size_for_every_runtime() -> None:
    x = np.ones((10, 2), dtype=np.float32)
    out = measure_latency({"a": Doubler(), "b": Doubler()}, x, reps=5, blocks=2)
    assert set(out) == {"a", "b"}
    for lat in out.values():
        assert set(lat.p50_us) == set(lat.p99_us) == {1, 64}
        assert all(0 < lat.p50_us[b] <= lat.p99_us[b] < math.inf for b in (1, 64))


def _row(name: str, status: Status, p99_b1: float) -> Row:
    lat = Latency({1: p99_b1 / 2, 64: 10.0}, {1: p99_b1, 64: 20.0})
    return Row(Candidate(name, name), status, latency=lat)


def test_best_is_the_fastest_accepted_candidate_that_beats_the_baseline() -> None:
    rows = [_row("baseline", Status.BASELINE, 10.0), _row("a", Status.ACCEPTED, 8.0),
            _row("b", Status.REFUSED, 1.0), _row("c", Status.ACCEPTED, 5.0)]
    report = Report("m", "1", "h", "auc", 0.005, {"uri": "v", "eval_rows": 1}, rows)
    best = report.best()
    assert best is not None and best.name == "c"
    slower = Report("m", "1", "h", "auc", 0.005, {"uri": "v", "eval_rows": 1},
                    [_row("baseline", Status.BASELINE, 1.0), _row("a", Status.ACCEPTED, 8.0)])
    assert slower.best() is None


def test_float16_without_its_converter_is_skipped_naming_the_extra(
    svc: Path, valid_npz: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tailguard.optimize.pipeline import Options, run_optimize

    monkeypatch.setitem(sys.modules, "onnxconverter_common", None)
    monkeypatch.setitem(sys.modules, "onnxconverter_common.float16", None)
    report = run_optimize(svc, "primary", valid_npz, Options(prune=(), distill=False, reps=5, blocks=1))
    row = report.row("float16")
    assert row is not None and row.status is Status.SKIPPED
    assert "tailguard[optimize]" in row.reason
