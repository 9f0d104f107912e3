"""Validation rows: Parquet and .npz, column order, halves, missing pieces."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tailguard.optimize.data import load_validation
from tailguard.optimize.problems import OptimizeError

INPUTS = ("a.x", "a.y", "b.z")


def _rows(n: int = 100) -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    return x, (np.arange(n) % 2).astype(np.float64)


def test_parquet_columns_are_read_in_the_models_order(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    x, y = _rows()
    path = tmp_path / "v.parquet"
    # Written in another order, with an extra column: the model's order is what counts.
    pq.write_table(pa.table({"b.z": x[:, 2], "extra": y, "a.x": x[:, 0], "label": y, "a.y": x[:, 1]}), path)
    v = load_validation(path, INPUTS)
    both = np.concatenate([v.x_distill, v.x_eval])
    assert both.shape == (100, 3)
    # Every row is (3i, 3i+1, 3i+2): columns came back in input order.
    np.testing.assert_array_equal(both[:, 1] - both[:, 0], 1.0)
    np.testing.assert_array_equal(both[:, 2] - both[:, 0], 2.0)
    assert len(v.y_eval) == 50 and len(v.y_distill) == 50
    assert set(v.x_eval[:, 0]).isdisjoint(v.x_distill[:, 0])


def test_a_missing_parquet_column_is_named(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    x, y = _rows()
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"a.x": x[:, 0], "a.y": x[:, 1], "target": y}), path)
    with pytest.raises(OptimizeError, match=r"'b\.z', 'label'"):
        load_validation(path, INPUTS)


def test_parquet_without_pyarrow_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(OptimizeError, match=r"tailguard\[history\]"):
        load_validation(path, INPUTS)


def test_npz_columns_array_reorders(tmp_path: Path) -> None:
    x, y = _rows()
    path = tmp_path / "v.npz"
    np.savez(path, X=x[:, [2, 0, 1]], y=y, columns=np.array(["b.z", "a.x", "a.y"]))
    v = load_validation(path, INPUTS)
    np.testing.assert_array_equal(v.x_eval[:, 1] - v.x_eval[:, 0], 1.0)


def test_npz_of_the_wrong_width_is_refused(tmp_path: Path) -> None:
    x, y = _rows()
    path = tmp_path / "v.npz"
    np.savez(path, X=x[:, :2], y=y)
    with pytest.raises(OptimizeError, match="2 columns, the model reads 3"):
        load_validation(path, INPUTS)


def test_unlabelled_rows_are_dropped_and_too_few_refused(tmp_path: Path) -> None:
    x, y = _rows(30)
    y[:15] = np.nan
    path = tmp_path / "v.npz"
    np.savez(path, X=x, y=y)
    with pytest.raises(OptimizeError, match="15 labelled rows"):
        load_validation(path, INPUTS)
