"""Train LightGBM binary classifiers on a prepared feature matrix and export each as a version.

A service's training script builds its matrix itself (the examples replay recorded events
through the serving transforms, so training cannot drift from serving); what follows is the
same for every service and lives here:

* ``fit_binary``: a deterministic LightGBM fit (fixed seed, one thread by default: two threads
  on a busy 2-core machine ran 6x slower, OpenMP spinning), with optional early stopping on
  the validation rows;
* ``train_and_export``: for each ``TreeModel`` plan, fit on the training rows, score AUC on
  the validation rows, take the next version number and write the version with
  ``export_lightgbm`` (ONNX + compiled trees + a manifest pinning the versions of the feature
  views its columns come from, and the training data's description);
* ``models_current``: whether the latest versions on disk still pin the live feature view
  versions (and the drift reference, when there is one, describes the latest primary);
* ``write_service_reference``: the drift reference of the validation rows, as the service
  serves them;
* ``ensure_trained`` and ``train_command``: train a service's models only when they are not
  up to date (from a serving script, and as a training script's command line).

Offline tooling, never on a reply path.  Needs the ``train`` extra (LightGBM, onnxmltools).
The service-level steps (the drift reference) import ``tailguard.service`` and
``tailguard.observe.reference*`` inside the functions: they sit above the model layer.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.models.export import export_lightgbm
from tailguard.models.manifest import Manifest, read_manifest
from tailguard.models.repository import list_versions
from tailguard.observe.quality import auc

__all__ = [
    "TrainedModel",
    "TreeModel",
    "ensure_trained",
    "fit_binary",
    "models_current",
    "next_version",
    "pinned_feature_versions",
    "train_and_export",
    "train_command",
    "write_service_reference",
]


@dataclass(frozen=True)
class TreeModel:
    """What to train: model ``name`` over ``inputs`` (None: every column of the matrix),
    ``trees`` boosting rounds of ``leaves`` leaves, ``learning_rate``, and at least
    ``min_leaf`` rows per leaf."""

    name: str
    inputs: tuple[str, ...] | None
    trees: int
    leaves: int
    learning_rate: float
    min_leaf: int


@dataclass(frozen=True)
class TrainedModel:
    """One exported version: its name, version, input columns, the trees it kept, leaves per
    tree, AUC on the validation rows and the manifest written."""

    name: str
    version: str
    inputs: tuple[str, ...]
    trees: int
    leaves: int
    valid_auc: float
    manifest: Manifest

    def metrics(self) -> dict[str, Any]:
        """``{"version", "valid_auc"}`` (AUC to 4 places): what a training report keeps."""
        return {"version": self.version, "valid_auc": round(self.valid_auc, 4)}

    def summary(self) -> str:
        """One line for a training log."""
        return (f"{self.name} v{self.version}: {self.trees} trees x {self.leaves} leaves on "
                f"{len(self.inputs)} features, validation AUC {self.valid_auc:.3f}")


def fit_binary(
    x: np.ndarray,
    y: np.ndarray,
    *,
    trees: int,
    leaves: int,
    learning_rate: float,
    min_leaf: int,
    seed: int,
    num_threads: int = 1,
    valid: tuple[np.ndarray, np.ndarray] | None = None,
    early_stopping_rounds: int | None = None,
) -> Any:
    """A LightGBM booster (binary objective) fit on ``x`` and ``y``, deterministic for a seed.

    With ``early_stopping_rounds`` (needs ``valid``, its rows and labels) boosting stops when
    the validation log loss has not improved for that many rounds, and the booster keeps its
    best iteration (``booster.best_iteration``)."""
    import lightgbm as lgb

    params = {
        "objective": "binary",
        "learning_rate": learning_rate,
        "num_leaves": leaves,
        "min_data_in_leaf": min_leaf,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "seed": seed,
        "deterministic": True,
        "num_threads": num_threads,
        "verbose": -1,
    }
    train_set = lgb.Dataset(x, y)
    if early_stopping_rounds is None:
        return lgb.train(params, train_set, num_boost_round=trees)
    if valid is None:
        raise ValueError("early stopping needs the validation rows (valid=(x, y))")
    return lgb.train(
        {**params, "metric": "binary_logloss"},
        train_set,
        num_boost_round=trees,
        valid_sets=[lgb.Dataset(valid[0], valid[1], reference=train_set)],
        callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False)],
    )


def next_version(root: str | Path, name: str) -> str:
    """The version after the latest numbered one of ``root/name`` ("1" when there is none)."""
    versions = list_versions(Path(root), name)
    return str(int(versions[-1]) + 1) if versions and versions[-1].isdigit() else "1"


def pinned_feature_versions(columns: Iterable[str], live: Mapping[str, str]) -> dict[str, str]:
    """The live version of every view the qualified ``columns`` (``view.field``) come from."""
    return {v: live[v] for v in sorted({c.split(".")[0] for c in columns})}


def train_and_export(
    x: np.ndarray,
    y: np.ndarray,
    columns: Sequence[str],
    plans: Iterable[TreeModel],
    *,
    train: np.ndarray,
    valid: np.ndarray,
    root: str | Path,
    outputs: Sequence[str],
    live: Mapping[str, str],
    training: Mapping[str, Any],
    seed: int,
    num_threads: int = 1,
    scale: float = 1.0,
    compile_trees: bool = True,
    early_stopping_rounds: int | None = None,
    log: Callable[[str], object] | None = None,
) -> dict[str, TrainedModel]:
    """Fit every plan on the ``train`` rows of ``x`` (boolean mask) and export it as the next
    version under ``root``; returns the exported models by name.

    ``columns`` names the columns of ``x``; ``live`` holds the live feature view versions the
    manifests pin; ``training`` (what the data and the label are) opens each manifest's
    training record, which goes on with the row counts, the validation AUC (on the ``valid``
    rows) and the tree shape.  ``scale`` shrinks the tree counts (tests train tiny models,
    never fewer than 5 trees).  ``log`` gets one line per model."""
    names = list(columns)
    x_tr, y_tr, x_va, y_va = x[train], y[train], x[valid], y[valid]
    out: dict[str, TrainedModel] = {}
    for plan in plans:
        cols = tuple(names) if plan.inputs is None else plan.inputs
        idx = [names.index(c) for c in cols]
        rounds = max(5, int(plan.trees * scale))
        booster = fit_binary(
            x_tr[:, idx], y_tr, trees=rounds, leaves=plan.leaves, learning_rate=plan.learning_rate,
            min_leaf=plan.min_leaf, seed=seed, num_threads=num_threads,
            valid=(x_va[:, idx], y_va), early_stopping_rounds=early_stopping_rounds,
        )
        if early_stopping_rounds is not None and booster.best_iteration > 0:
            rounds = int(booster.best_iteration)
        m_auc = auc(y_va, booster.predict(x_va[:, idx]))  # early stopped: its best iteration
        version = next_version(root, plan.name)
        manifest = export_lightgbm(
            booster,
            root,
            plan.name,
            version,
            inputs=cols,
            outputs=outputs,
            feature_versions=pinned_feature_versions(cols, live),
            training={
                **training,
                "rows_train": int(np.count_nonzero(train)),
                "rows_valid": int(np.count_nonzero(valid)),
                "valid_auc": round(m_auc, 4),
                "trees": rounds,
                "leaves": plan.leaves,
            },
            compile_trees=compile_trees,
        )
        trained = TrainedModel(plan.name, version, cols, rounds, plan.leaves, m_auc, manifest)
        out[plan.name] = trained
        if log is not None:
            log(f"  {trained.summary()}")
    return out


def models_current(
    root: str | Path, names: Sequence[str], live: Mapping[str, str], reference: str | Path | None = None
) -> bool:
    """True when every model of ``names`` has a version under ``root`` and the latest pins the
    ``live`` feature view versions; with ``reference`` (a drift reference file), also when
    that reference describes the latest version of ``names[0]`` (the primary) on live views."""
    from tailguard.observe.reference import DriftReferenceError, Reference

    root = Path(root)
    for name in names:
        versions = list_versions(root, name)
        if not versions:
            return False
        m = read_manifest(root / name / versions[-1], verify=False)
        if any(live.get(v) != ver for v, ver in m.feature_versions.items()):
            return False
    if reference is None:
        return True
    try:
        meta = Reference.load(Path(reference)).meta
    except DriftReferenceError:
        return False
    return bool(meta.get("model") == f"{names[0]}/{list_versions(root, names[0])[-1]}"
                and all(live.get(v) == ver for v, ver in meta.get("feature_versions", {}).items()))


def write_service_reference(service_dir: str | Path, rows: np.ndarray, columns: Sequence[str]) -> Path | None:
    """The drift reference of ``rows`` (columns ``columns``) and the service's primary model's
    answers on them, saved at the spec's ``[drift] reference`` path; None (nothing written)
    when the spec does not enable drift.  Loads the service (its models as just exported)."""
    from tailguard.observe.reference_data import build_service_reference
    from tailguard.service import load_service
    from tailguard.spec import load_spec

    if not load_spec(service_dir).drift.enabled:
        return None
    svc = load_service(service_dir, freeze_gc=False)
    return build_service_reference(svc, rows, columns).save(Path(service_dir) / svc.spec.drift.reference)


def ensure_trained(
    service_dir: Path,
    up_to_date: Callable[[Path], bool],
    train: Callable[..., dict[str, Any]],
    log: Callable[..., object] = print,
    **train_kwargs: Any,
) -> dict[str, Any]:
    """Run ``train(service_dir, log=log, **train_kwargs)`` unless ``up_to_date(service_dir)``
    (models missing, or pinning stale feature versions); returns its metrics, ``{}`` when
    nothing was trained."""
    if up_to_date(service_dir):
        return {}
    log("training models (artifacts missing or feature versions changed) ...")
    return train(service_dir, log=log, **train_kwargs)


def train_command(
    service_dir: Path,
    up_to_date: Callable[[Path], bool],
    train: Callable[..., object],
    description: str,
    argv: Sequence[str] | None = None,
) -> None:
    """A training script's command line: ``train(service_dir)`` unless ``up_to_date(service_dir)``
    (``--force`` retrains anyway).  ``description`` is the ``--help`` text."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--force", action="store_true", help="retrain even if models are up to date")
    args = ap.parse_args(argv)
    if not args.force and up_to_date(service_dir):
        print("models are up to date (use --force to retrain)")
        return
    train(service_dir)
