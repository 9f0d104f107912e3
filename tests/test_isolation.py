"""Deadline isolation (``isolation = "thread"``): a decision stops waiting for a blocked model.

The blocked model waits on an Event the test sets only after the decision is back, so the
test proves the reply did not wait for the model — with no sleep anywhere.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tailguard.clock import MonotonicClock
from tailguard.decision import Flag
from tailguard.engine import Engine
from tailguard.models.runtime import Runtime
from tailguard.resilience.isolation import IsolatedRuntime
from tailguard.service import Service


class _Constant:
    kind = "constant"
    n_inputs = 3
    n_outputs = 1

    def __init__(self) -> None:
        self.release = threading.Event()
        self.block = False
        self.calls = 0

    def run(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.block:
            self.release.wait()
        return np.full((x.shape[0], 1), 0.25) + x[:, :1]


@pytest.fixture()
def iso() -> tuple[IsolatedRuntime, _Constant]:
    inner = _Constant()
    rt = IsolatedRuntime(inner, MonotonicClock(), "t")
    yield rt, inner
    inner.release.set()
    rt.close()


def test_call_returns_the_model_outputs(iso: tuple[IsolatedRuntime, _Constant]) -> None:
    rt, _ = iso
    x = np.array([[1.0, 0, 0], [2.0, 0, 0]], dtype=np.float32)
    y = rt.call(x, 5 * 10**9)
    assert y is not None
    assert y[:, 0].tolist() == [1.25, 2.25]


def test_blocked_model_times_out_and_reports_busy(iso: tuple[IsolatedRuntime, _Constant]) -> None:
    rt, inner = iso
    inner.block = True
    x = np.zeros((1, 3), dtype=np.float32)
    assert rt.call(x, 20_000_000) is None  # 20 ms, the model never answers within it
    assert not inner.release.is_set()  # we came back while the model was still blocked
    assert rt.busy
    assert rt.call(x, 20_000_000) is None  # still running the abandoned call: skipped at once
    assert inner.calls == 1
    inner.release.set()
    inner.block = False
    assert rt.run(x)[0, 0] == 0.25  # run() waits for the worker to be free
    assert rt.late_ns and rt.late_ns[0][0] == 1  # the late call's duration is kept


def test_model_exception_reaches_the_caller(iso: tuple[IsolatedRuntime, _Constant]) -> None:
    rt, inner = iso

    def boom(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("model crashed")

    inner.run = boom  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="model crashed"):
        rt.call(np.zeros((1, 3), dtype=np.float32), 5 * 10**9)
    assert not rt.busy  # and the worker survives for the next call


def test_non_positive_timeout_never_starts_the_model(iso: tuple[IsolatedRuntime, _Constant]) -> None:
    rt, inner = iso
    assert rt.call(np.zeros((1, 3), dtype=np.float32), 0) is None
    assert inner.calls == 0


def test_engine_answers_from_the_next_rung_while_an_isolated_primary_is_blocked(
    service: Service, engine: Engine
) -> None:
    m = service.models["primary"]
    blocker = _Blocking(m.runtime)
    iso_rt = IsolatedRuntime(blocker, MonotonicClock(), "primary")
    m.runtime = iso_rt
    engine.rungs[0].isolated = iso_rt
    try:
        d = engine.predict("a", {"price": 100.0, "size": 3.0}, priority="normal")
        assert not blocker.release.is_set()  # answered while the primary was still running
        assert d.rung == "fast"
        assert d.flag & Flag.FALLBACK
        assert engine.statistics()["rungs"]["primary"]["timed_out"] == 1
        # While the abandoned call runs, the primary is busy: skipped without waiting.
        assert engine.predict("a", {"price": 100.0, "size": 3.0}, priority="normal").rung == "fast"
        assert blocker.calls == 1
    finally:
        blocker.release.set()
        iso_rt.close()


class _Blocking:
    kind = "blocking"

    def __init__(self, inner: Runtime) -> None:
        self.inner = inner
        self.n_inputs = inner.n_inputs
        self.n_outputs = inner.n_outputs
        self.release = threading.Event()
        self.calls = 0

    def run(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.release.wait()
        return self.inner.run(x)
