"""Fixtures of the registry tests: a second, different primary version and signing keys."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from toyservice import OUTPUTS, PRIMARY_INPUTS, live_versions, train_booster, training_matrix

from tailguard.audit.keys import new_key, new_signing_key
from tailguard.models.manifest import TrainingData, read_manifest, write_manifest


@pytest.fixture(scope="session")
def primary_v2(toy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A version "2" of the toy primary model trained differently from version 1 (so its
    answers differ), with training data and metrics recorded, staged outside any service."""
    from tailguard.models.export import export_lightgbm

    stage = tmp_path_factory.mktemp("stage")
    live = live_versions(toy_dir)
    x, y = training_matrix(600, seed=11)
    booster = train_booster(x, y, 9, 4)
    export_lightgbm(booster, stage, "primary", "2", inputs=PRIMARY_INPUTS, outputs=OUTPUTS,
                    feature_versions={v: live[v] for v in ("order", "stats")})
    d = stage / "primary" / "2"
    m = read_manifest(d)
    write_manifest(d, msgspec.structs.replace(
        m,
        training_data=TrainingData(uri="s3://bucket/toy/train.parquet", sha256="ab" * 32, rows=600,
                                   start="2026-11-01T00:00:00Z", end="2026-11-30T00:00:00Z"),
        metrics={"auc": 0.71, "logloss": 0.62},
    ))
    return d


@pytest.fixture
def ed_key(tmp_path: Path) -> tuple[Path, Path]:
    """An Ed25519 signing key and its public key file."""
    key = tmp_path / "keys" / "release.pem"
    key.parent.mkdir()
    return key, new_signing_key(key)


@pytest.fixture
def mac_key(tmp_path: Path) -> Path:
    """A 32-byte MAC key file."""
    path = tmp_path / "mac.key"
    new_key(path)
    return path
