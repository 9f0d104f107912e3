"""Fault-injection tests: the toy service under ``tailguard.stress`` scenarios.

The toy service's budgets (500 µs / 2 ms / 20 ms) are in-process budgets; here requests
cross loopback through the Python client on a busy 2-core machine, so the copy these tests
serve has budgets scaled for that path (critical 20 ms, normal 50 ms, bulk 200 ms) and the
late slack is 25 ms: the assertions are about lost requests, the ladder and recovery, with
latency bounds at budget level, not about the machine's speed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from stresskit import KEYS, events
from toyservice import CTX

from tailguard.stress.target import Target


@pytest.fixture(scope="session")
def stress_target(toy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Target:
    """The toy service with loopback budgets (see the module docstring)."""
    d = Path(shutil.copytree(toy_dir, tmp_path_factory.mktemp("stress") / "toy"))
    spec = d / "service.toml"
    text = spec.read_text()
    for old, new in (('budget = "20ms"', 'budget = "200ms"'), ('budget = "2ms"', 'budget = "50ms"'),
                     ('budget = "500us"', 'budget = "20ms"')):
        assert old in text
        text = text.replace(old, new)
    spec.write_text(text)
    return Target(d, KEYS, dict(CTX), "item", events)


