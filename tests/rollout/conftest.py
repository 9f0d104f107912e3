"""Fixtures of the rollout tests: the toy service with a second, different primary version."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from toyservice import OUTPUTS, PRIMARY_INPUTS, feed, live_versions, train_booster, training_matrix

from tailguard import Service, load_service
from tailguard.testing import FakeClock


@pytest.fixture(scope="session")
def staged_v2(toy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A version "2" of the toy primary, trained differently (its answers differ), staged aside."""
    from tailguard.models.export import export_lightgbm

    stage = tmp_path_factory.mktemp("rollout-stage")
    live = live_versions(toy_dir)
    x, y = training_matrix(600, seed=11)
    export_lightgbm(train_booster(x, y, 9, 4), stage, "primary", "2", inputs=PRIMARY_INPUTS,
                    outputs=OUTPUTS, feature_versions={v: live[v] for v in ("order", "stats")})
    return stage / "primary" / "2"


@pytest.fixture
def svc(toy_copy: Path, staged_v2: Path, clock: FakeClock) -> Service:
    """The toy service on a fake clock serving primary/1, with primary/2 added to its repository
    after load (the version policy would otherwise pick it)."""
    s = load_service(toy_copy, clock=clock, freeze_gc=False)
    shutil.copytree(staged_v2, toy_copy / "models" / "primary" / "2")
    feed(s, "a")
    feed(s, "b", (99.0, 98.0), size=7.0)
    return s
