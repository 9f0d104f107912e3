"""Replay: recorded decisions re-run on the recorded features reproduce the outputs bit for
bit; a changed model is reported row by row; an unverified log is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from toyservice import CTX, feed

from tailguard import Service
from tailguard.audit.format import segment_name
from tailguard.audit.log import AuditLog
from tailguard.audit.replay import replay
from tailguard.errors import TailguardError
from tailguard.testing import FailingRuntime

KEY = bytes(range(32))


class Nudged:
    """A model that answers a hair differently (a silently changed model)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.kind, self.n_inputs, self.n_outputs = "nudged", inner.n_inputs, inner.n_outputs  # type: ignore[attr-defined]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.inner.run(x) + 1e-12  # type: ignore[attr-defined, no-any-return]


def record(service: Service, directory: Path) -> AuditLog:
    log = AuditLog(directory, KEY, service.spec.name, service.engine)
    service.engine.set_hooks([log])
    feed(service, "a")
    for i in range(10):
        service.engine.predict("a" if i % 2 else f"k{i}", {"price": 100.0 + i, "size": 1.0 + i})
    service.engine.predict_batch(["a", "b", "c"], CTX)
    log.close()
    return log


def test_replay_reproduces_every_model_answer_bit_for_bit(service: Service, tmp_path: Path) -> None:
    record(service, tmp_path / "a")
    r = replay(tmp_path / "a", KEY, service)
    assert (r.ok, r.records, r.rows, r.equal, r.different) == (True, 11, 13, 13, 0)


def test_a_changed_model_is_reported_row_by_row(service: Service, tmp_path: Path) -> None:
    record(service, tmp_path / "a")
    service.models["primary"].runtime = Nudged(service.models["primary"].runtime)
    r = replay(tmp_path / "a", KEY, service)
    assert not r.ok and r.different == 13 and r.mismatches[0][:2] == (0, 0)


def test_rows_answered_by_the_default_are_compared_with_it(service: Service, tmp_path: Path) -> None:
    for name in ("primary", "fast"):
        service.models[name].runtime = FailingRuntime(service.models[name].runtime, "raise")
    record(service, tmp_path / "a")
    r = replay(tmp_path / "a", KEY, service)
    assert r.ok and r.equal + r.skipped == r.rows and r.equal > 0


def test_an_unverified_log_is_not_replayed(service: Service, tmp_path: Path) -> None:
    record(service, tmp_path / "a")
    path = tmp_path / "a" / segment_name(0)
    data = bytearray(path.read_bytes())
    data[60] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(TailguardError, match="does not verify"):
        replay(tmp_path / "a", KEY, service)
