"""Shared fixtures: the toy service (built once per session), fake clocks, loaded services."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import settings
from toyservice import build_service

from tailguard import Service, load_service
from tailguard.engine import Engine
from tailguard.testing import FakeClock

# No deadline: Hypothesis' per-example deadline is a timed assertion, which tests must not make.
settings.register_profile("tailguard", deadline=None, max_examples=100)
settings.load_profile("tailguard")


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy service directory with trained models (read-only: copy it to change files)."""
    return build_service(tmp_path_factory.mktemp("toy"))


@pytest.fixture
def toy_copy(toy_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the toy service directory that a test may edit."""
    return Path(shutil.copytree(toy_dir, tmp_path / "svc"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def service(toy_dir: Path, clock: FakeClock) -> Service:
    """The toy service loaded on a fake clock (gc left alone: tests load many services)."""
    return load_service(toy_dir, clock=clock, freeze_gc=False)


@pytest.fixture
def engine(service: Service) -> Engine:
    return service.engine
