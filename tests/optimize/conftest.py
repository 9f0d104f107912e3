"""Fixtures of the optimizer tests: a private toy service and validation rows for it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from toyservice import training_matrix


@pytest.fixture(scope="module")
def svc(toy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the toy service (primary: 20 trees x 8 leaves, served as compiled trees)."""
    return Path(shutil.copytree(toy_dir, tmp_path_factory.mktemp("opt") / "svc"))


@pytest.fixture(scope="session")
def valid_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,200 labelled rows in the primary model's column order (not the training rows)."""
    x, y = training_matrix(1200, seed=5)
    path = tmp_path_factory.mktemp("valid") / "valid.npz"
    np.savez(path, X=x, y=y)
    return path
