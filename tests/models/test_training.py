"""Training and exporting LightGBM binary models as repository versions (models.training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from toyservice import training_matrix

from tailguard.models.manifest import read_manifest
from tailguard.models.training import (
    TrainedModel,
    TreeModel,
    ensure_trained,
    fit_binary,
    models_current,
    next_version,
    pinned_feature_versions,
    train_and_export,
    train_command,
)

pytest.importorskip("lightgbm")

COLUMNS = ("a.price", "a.count", "b.size", "b.notional", "c.ratio")
LIVE = {"a": "va1", "b": "vb1", "c": "vc1", "unused": "vu1"}
PLANS = (TreeModel("full", None, 8, 4, 0.2, 10), TreeModel("small", ("a.price", "b.size"), 6, 4, 0.2, 10))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y = training_matrix(400, seed=3)
    valid = np.arange(len(y)) % 4 == 0
    return x, y, valid


def export(data: tuple[np.ndarray, np.ndarray, np.ndarray], root: Path,
           scale: float = 1.0) -> dict[str, TrainedModel]:
    x, y, valid = data
    return train_and_export(x, y, COLUMNS, PLANS, train=~valid, valid=valid, root=root, outputs=("p",),
                            live=LIVE, training={"data": "toy", "label": "y"}, seed=1, scale=scale,
                            compile_trees=False)


def test_each_plan_becomes_a_version_pinning_only_the_views_it_reads(
        data: tuple[np.ndarray, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    trained = export(data, tmp_path)
    full = read_manifest(tmp_path / "full" / "1")
    small = read_manifest(tmp_path / "small" / "1")
    assert (full.inputs, small.inputs) == (COLUMNS, ("a.price", "b.size"))
    assert full.feature_versions == {"a": "va1", "b": "vb1", "c": "vc1"}
    assert small.feature_versions == {"a": "va1", "b": "vb1"}
    assert set(trained) == {"full", "small"}


def test_the_training_record_holds_the_description_rows_and_validation_auc(
        data: tuple[np.ndarray, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    trained = export(data, tmp_path)
    rec = read_manifest(tmp_path / "full" / "1").training
    assert list(rec)[:2] == ["data", "label"]
    assert (rec["rows_train"], rec["rows_valid"], rec["trees"], rec["leaves"]) == (300, 100, 8, 4)
    full = trained["full"]
    assert rec["valid_auc"] == round(full.valid_auc, 4)
    assert full.valid_auc > 0.8  # the toy label is learnable


def test_a_second_run_exports_the_next_version(data: tuple[np.ndarray, np.ndarray, np.ndarray],
                                               tmp_path: Path) -> None:
    assert next_version(tmp_path, "full") == "1"
    export(data, tmp_path)
    trained = export(data, tmp_path)
    assert next_version(tmp_path, "full") == "3"
    assert trained["full"].metrics()["version"] == "2"


def test_scale_shrinks_the_tree_count_but_keeps_five(data: tuple[np.ndarray, np.ndarray, np.ndarray],
                                                      tmp_path: Path) -> None:
    trained = export(data, tmp_path, scale=0.1)
    assert [t.trees for t in trained.values()] == [5, 5]


def test_early_stopping_keeps_the_best_iteration(data: tuple[np.ndarray, np.ndarray, np.ndarray],
                                                 tmp_path: Path) -> None:
    x, y, valid = data
    plan = TreeModel("long", None, 400, 4, 0.5, 10)
    trained = train_and_export(x, y, COLUMNS, [plan], train=~valid, valid=valid, root=tmp_path,
                               outputs=("p",), live=LIVE, training={}, seed=1, compile_trees=False,
                               early_stopping_rounds=5)["long"]
    assert 0 < trained.trees < 400
    assert read_manifest(tmp_path / "long" / "1").training["trees"] == trained.trees


def test_early_stopping_without_validation_rows_is_refused() -> None:
    x, y = training_matrix(50, seed=1)
    with pytest.raises(ValueError, match="validation rows"):
        fit_binary(x, y, trees=5, leaves=4, learning_rate=0.1, min_leaf=5, seed=1, early_stopping_rounds=3)


def test_pinned_feature_versions_are_the_views_of_the_columns() -> None:
    assert pinned_feature_versions(["b.x", "a.y", "b.z"], LIVE) == {"a": "va1", "b": "vb1"}


def test_models_are_current_until_a_view_version_changes(data: tuple[np.ndarray, np.ndarray, np.ndarray],
                                                         tmp_path: Path) -> None:
    assert not models_current(tmp_path, ["full", "small"], LIVE)  # nothing exported yet
    export(data, tmp_path)
    assert models_current(tmp_path, ["full", "small"], LIVE)
    assert not models_current(tmp_path, ["full", "small"], {**LIVE, "b": "vb2"})
    assert models_current(tmp_path, ["small"], {**LIVE, "c": "vc2"})  # small does not read c


def test_models_are_not_current_without_their_drift_reference(
        data: tuple[np.ndarray, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    export(data, tmp_path)
    assert not models_current(tmp_path, ["full"], LIVE, reference=tmp_path / "reference" / "missing.json")


def test_ensure_trained_trains_only_what_is_not_up_to_date(tmp_path: Path) -> None:
    calls: list[dict[str, object]] = []

    def train(d: Path, **kw: object) -> dict[str, object]:
        calls.append({"dir": d, **kw})
        return {"m": 1}

    assert ensure_trained(tmp_path, lambda d: True, train, log=lambda *_: None) == {}
    assert not calls
    assert ensure_trained(tmp_path, lambda d: False, train, log=print, scale=0.5) == {"m": 1}
    assert calls == [{"dir": tmp_path, "log": print, "scale": 0.5}]


def test_train_command_retrains_with_force_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trained: list[Path] = []
    train_command(tmp_path, lambda d: True, trained.append, "t", argv=[])
    assert not trained and "up to date" in capsys.readouterr().out
    train_command(tmp_path, lambda d: True, trained.append, "t", argv=["--force"])
    train_command(tmp_path, lambda d: False, trained.append, "t", argv=[])
    assert trained == [tmp_path, tmp_path]
