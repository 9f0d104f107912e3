"""Validation rows for ``tailguard optimize``: features in the model's input order, labels.

A Parquet file holds one column per model input, named by its qualified name (``view.field``,
as in the manifest) plus a label column (``label`` unless told otherwise); extra columns are
ignored.  An ``.npz`` file (handy in tests) holds ``X`` (rows x inputs, in the manifest's
order, or in the order of an optional ``columns`` array of names) and ``y``.  Reading Parquet
needs pyarrow (the ``history`` extra).

The rows are split once, at random with a fixed seed, into a *distillation* half (the only
rows a distilled student is trained on) and an *evaluation* half on which every candidate,
the baseline included, is scored, so no candidate is scored on rows it was fitted to.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tailguard.models.manifest import file_sha256
from tailguard.optimize.problems import OptimizeError

__all__ = ["Validation", "load_validation"]


@dataclass(frozen=True)
class Validation:
    """Validation rows split into halves: ``x_*`` float32 (n, n_inputs), ``y_*`` float64 (n,)."""

    uri: str
    sha256: str
    x_distill: np.ndarray
    y_distill: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray

    @property
    def rows(self) -> int:
        """Rows in both halves."""
        return len(self.y_distill) + len(self.y_eval)


def _read_parquet(path: Path, inputs: Sequence[str], label: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError as exc:
        raise OptimizeError(
            f"{path}: reading Parquet needs pyarrow: pip install 'tailguard[history]' (or pass an .npz)"
        ) from exc
    names = set(pq.read_schema(path).names)
    missing = [c for c in (*inputs, label) if c not in names]
    if missing:
        raise OptimizeError(f"{path}: no column(s) {missing}; the model reads {list(inputs)} "
                            f"and the label column is {label!r} (--label)")
    table = pq.read_table(path, columns=[*inputs, label])
    x = np.column_stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float32)
                         for c in inputs])
    y = table.column(label).to_numpy(zero_copy_only=False).astype(np.float64)
    return x, y


def _read_npz(path: Path, inputs: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        if "X" not in z or "y" not in z:
            raise OptimizeError(f"{path}: an .npz needs arrays X and y, has {sorted(z.files)}")
        x = np.asarray(z["X"], dtype=np.float32)
        y = np.asarray(z["y"], dtype=np.float64)
        columns = [str(c) for c in z["columns"]] if "columns" in z else None
    if x.ndim != 2:
        raise OptimizeError(f"{path}: X must be 2-D, is {x.shape}")
    if columns is not None:
        missing = [c for c in inputs if c not in columns]
        if missing:
            raise OptimizeError(f"{path}: columns lacks {missing}")
        x = x[:, [columns.index(c) for c in inputs]]
    elif x.shape[1] != len(inputs):
        raise OptimizeError(f"{path}: X has {x.shape[1]} columns, the model reads {len(inputs)} "
                            "(add a 'columns' array naming them)")
    return x, y


def load_validation(path: str | Path, inputs: Sequence[str], *, label: str = "label",
                    seed: int = 0, min_rows: int = 20) -> Validation:
    """Read ``path`` (Parquet or ``.npz``) into the model's column order and split it in halves."""
    p = Path(path)
    if not p.is_file():
        raise OptimizeError(f"{p}: no such validation file")
    x, y = _read_npz(p, inputs) if p.suffix == ".npz" else _read_parquet(p, inputs, label)
    if len(y) != len(x):
        raise OptimizeError(f"{p}: {len(x)} feature rows but {len(y)} labels")
    keep = np.isfinite(y)
    x, y = np.ascontiguousarray(x[keep]), y[keep]
    if len(y) < min_rows:
        raise OptimizeError(f"{p}: {len(y)} labelled rows, at least {min_rows} are needed")
    order = np.random.default_rng(seed).permutation(len(y))
    half = len(y) // 2
    d, e = np.sort(order[:half]), np.sort(order[half:])
    return Validation(uri=str(p), sha256=file_sha256(p), x_distill=np.ascontiguousarray(x[d]),
                      y_distill=y[d], x_eval=np.ascontiguousarray(x[e]), y_eval=y[e])
