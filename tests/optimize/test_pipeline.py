"""``run_optimize``: every candidate built and judged, refusals, and writing a version."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
from toyservice import live_versions, training_matrix

from tailguard.models.manifest import read_manifest
from tailguard.models.repository import list_versions, load_model
from tailguard.optimize.measure import predict
from tailguard.optimize.pipeline import Options, run_optimize
from tailguard.optimize.report import Report, Status
from tailguard.spec import load_spec

FAST = {"reps": 20, "blocks": 2}


@pytest.fixture(scope="module")
def full(svc: Path, valid_npz: Path, tmp_path_factory: pytest.TempPathFactory) -> Report:
    """One run over every candidate, its scratch directory kept."""
    work = tmp_path_factory.mktemp("work")
    return run_optimize(svc, "primary", valid_npz, Options(prune=(10, 1), work=work, **FAST))


def test_every_option_is_listed(full: Report) -> None:
    names = [r.name for r in full.rows]
    assert names == ["baseline", "onnx", "ort-optimized", "int8-dynamic", "int8-static", "float16",
                     "trees", "prune-10", "prune-1", "distill"]
    assert full.rows[0].status is Status.BASELINE


def test_every_built_candidate_gives_finite_outputs_of_the_right_shape(full: Report, valid_npz: Path) -> None:
    x = np.load(valid_npz)["X"]
    built = [r for r in full.rows if r.status is not Status.SKIPPED]
    assert len(built) >= 7
    for r in built:
        assert r.candidate.runtime is not None
        out = predict(r.candidate.runtime, x)
        assert out.shape == (len(x), 1), r.name
        assert np.isfinite(out).all(), r.name
        assert r.accuracy is not None and r.accuracy.finite
        assert r.latency is not None and set(r.latency.p99_us) == {1, 64}


def test_graph_rewrites_keep_the_answers(full: Report) -> None:
    for name in ("onnx", "ort-optimized"):
        row = full.row(name)
        assert row is not None and row.accuracy is not None
        assert row.accuracy.max_abs_diff < 1e-5, name


def test_skipped_candidates_say_why(full: Report) -> None:
    reasons = {r.name: r.reason for r in full.rows if r.status is Status.SKIPPED}
    assert "nothing to quantise" in reasons["int8-dynamic"]  # a tree ensemble has no MatMul
    assert "already serves compiled trees" in reasons["trees"]


def test_pruned_candidate_keeps_the_first_trees(full: Report, svc: Path, valid_npz: Path) -> None:
    row = full.row("prune-10")
    assert row is not None and row.candidate.runtime is not None
    x = np.load(valid_npz)["X"][:50]
    booster = lgb.Booster(model_file=str(svc / "models" / "primary" / "1" / "model.txt"))
    want = booster.predict(x, num_iteration=10)
    np.testing.assert_allclose(predict(row.candidate.runtime, x)[:, 0], want, atol=1e-5)


def test_accuracy_is_scored_on_the_half_the_student_never_saw(full: Report) -> None:
    v = full.validation
    assert v["eval_rows"] + v["distill_rows"] == v["rows"] == 1200
    row = full.row("distill")
    assert row is not None
    assert f"on {v['distill_rows']} distillation rows" in row.candidate.description


def test_a_candidate_over_the_threshold_is_refused_and_not_written(svc: Path, valid_npz: Path) -> None:
    before = list_versions(svc / "models", "primary")
    report = run_optimize(svc, "primary", valid_npz,
                          Options(prune=(1,), distill=False, max_loss=0.001, write="prune-1", **FAST))
    row = report.row("prune-1")
    assert row is not None and row.loss is not None and row.loss > 0.001
    assert row.status is Status.REFUSED and "max-loss 0.001" in row.reason
    assert "refused" in report.write_error and not report.written
    assert list_versions(svc / "models", "primary") == before


def test_write_creates_a_version_that_loads_and_answers_as_measured(
    toy_dir: Path, tmp_path: Path, valid_npz: Path
) -> None:
    svc = Path(shutil.copytree(toy_dir, tmp_path / "svc"))
    parent = read_manifest(svc / "models" / "primary" / "1")
    report = run_optimize(svc, "primary", valid_npz,
                          Options(prune=(10,), distill=False, max_loss=1.0, write="prune-10", **FAST))
    assert report.written["version"] == "2" and report.written["candidate"] == "prune-10"
    m = read_manifest(svc / "models" / "primary" / "2")
    assert m.training["parent"] == {"version": "1", "content_hash": parent.content_hash}
    assert m.training["optimization"] == "prune-10"
    assert m.inputs == parent.inputs and m.feature_versions == parent.feature_versions
    assert {"auc", "auc_loss", "p50_us_b1", "p99_us_b1", "p50_us_b64", "p99_us_b64"} <= set(m.metrics)
    spec = next(s for s in load_spec(svc).models if s.name == "primary")
    loaded = load_model(spec, svc, live_versions(svc))
    assert loaded.version == "2" and loaded.runtime.kind == "trees"
    x, _ = training_matrix(40, seed=9)
    booster = lgb.Booster(model_file=str(svc / "models" / "primary" / "1" / "model.txt"))
    np.testing.assert_allclose(loaded.runtime.run(x)[:, 0], booster.predict(x, num_iteration=10), atol=1e-5)


def test_a_written_student_records_the_validation_file_as_its_training_data(
    toy_dir: Path, tmp_path: Path, valid_npz: Path
) -> None:
    svc = Path(shutil.copytree(toy_dir, tmp_path / "svc"))
    report = run_optimize(svc, "primary", valid_npz,
                          Options(prune=(), max_loss=1.0, write="distill", **FAST))
    m = read_manifest(svc / "models" / "primary" / report.written["version"])
    assert m.training_data is not None
    assert m.training_data.uri == str(valid_npz)
    assert m.training_data.rows == report.validation["distill_rows"]


def test_a_model_served_on_onnx_gets_a_compiled_trees_candidate(
    toy_dir: Path, tmp_path: Path, valid_npz: Path
) -> None:
    from toyservice import render_spec

    svc = Path(shutil.copytree(toy_dir, tmp_path / "svc"))
    (svc / "service.toml").write_text(render_spec(primary_runtime="onnx"))
    report = run_optimize(svc, "primary", valid_npz, Options(prune=(), distill=False, **FAST))
    assert report.rows[0].candidate.description == "the version as served (onnx)"
    assert report.row("onnx") is None  # the baseline is the ONNX graph already
    trees = report.row("trees")
    assert trees is not None and trees.status is Status.ACCEPTED
    assert trees.accuracy is not None and trees.accuracy.max_abs_diff < 1e-5
    assert [a.kind for a in trees.candidate.artifacts] == ["onnx", "trees"]
