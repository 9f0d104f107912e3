"""Probes of skipped models: due only after the interval, run by the owner within a budget or
by the background worker, and folded so a recovered model's estimate recovers at once."""

from __future__ import annotations

import threading

import numpy as np

from tailguard.models.manifest import Artifact, Manifest
from tailguard.models.repository import LoadedModel
from tailguard.resilience.ladder import compile_ladder
from tailguard.resilience.probe import Prober, fold_probe
from tailguard.spec import RungKind, RungSpec
from tailguard.testing import FakeClock

MS = 1_000_000


class _Timed:
    """A model whose every run advances the fake clock by ``cost_ns``."""

    kind = "timed"
    n_inputs = 2
    n_outputs = 1

    def __init__(self, clock: FakeClock, cost_ns: int) -> None:
        self.clock = clock
        self.cost_ns = cost_ns
        self.calls = 0

    def run(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.clock.advance(ns=self.cost_ns)
        return np.zeros((x.shape[0], 1))


class _Cloneable(_Timed):
    """Clones signal ``ran`` when a clone has run (so a test can wait without sleeping)."""

    def __init__(self, clock: FakeClock, cost_ns: int) -> None:
        super().__init__(clock, cost_ns)
        self.ran = threading.Event()
        self.clones = 0

    def clone(self) -> _Cloneable:
        self.clones += 1
        other = _Cloneable(self.clock, self.cost_ns)
        other.ran = self.ran
        return other

    def run(self, x: np.ndarray) -> np.ndarray:
        out = super().run(x)
        self.ran.set()
        return out


def _rungs(runtime: _Timed) -> tuple:
    m = Manifest(name="m", version="1", inputs=("v.a", "v.b"), outputs=("p",),
                 feature_versions={"v": "x"}, artifacts=(Artifact(kind="onnx", path="m", sha256=""),))
    model = LoadedModel(name="m", version="1", manifest=m, runtime=runtime)
    spec = (RungSpec(name="primary", kind=RungKind.MODEL, model="m"),
            RungSpec(name="default", kind=RungKind.DEFAULT, outputs={"p": 0.5}))
    return compile_ladder(spec, {"m": model}, ("v.a", "v.b"))[0]


def _slow_estimate(rung, ns: int = 5 * MS) -> None:
    rung.model.service_time.reseed(1, ns)


X = np.ones((1, 2), dtype=np.float32)


def _requested(cost_ns: int, **prober_kw: object) -> tuple[FakeClock, _Timed, tuple, Prober]:
    """A model estimated slow (5 ms) whose runs cost ``cost_ns``, with one probe requested."""
    clock = FakeClock()
    runtime = _Timed(clock, cost_ns)
    rungs = _rungs(runtime)
    _slow_estimate(rungs[0])
    p = Prober(rungs, clock.now_ns, 50 * MS, background=False, **prober_kw)  # type: ignore[arg-type]
    p.request(rungs[0], X, last_observed_ns=0)
    return clock, runtime, rungs, p


def test_no_probe_before_the_interval() -> None:
    clock = FakeClock()
    rungs = _rungs(_Timed(clock, 1000))
    p = Prober(rungs, clock.now_ns, 50 * MS, background=False)
    p.request(rungs[0], X, last_observed_ns=clock.now_ns() - 10 * MS)
    assert p.pending == {}


def test_due_probe_copies_the_input() -> None:
    clock = FakeClock()
    rungs = _rungs(_Timed(clock, 1000))
    p = Prober(rungs, clock.now_ns, 50 * MS, background=False)
    x = X.copy()
    p.request(rungs[0], x, last_observed_ns=clock.now_ns() - 60 * MS)
    x[:] = 7.0  # the engine reuses its buffer for the next request
    assert p.pending[0].tolist() == [[1.0, 1.0]]


def test_owner_probe_of_a_recovered_model_reseeds_its_estimate() -> None:
    clock, _, rungs, p = _requested(2000)
    last, failed = [0, 0], [0, 0]
    assert p.run_pending(None, last, failed) == 1
    st = rungs[0].model.service_time
    assert st.mean_ns(1) == 2000
    assert st.expected_ns(1) < 10_000
    assert last[0] == clock.now_ns()


def test_owner_probe_waits_when_the_model_does_not_fit_the_idle_budget() -> None:
    _, runtime, _, p = _requested(2000)
    assert p.run_pending(1 * MS, [0, 0], [0, 0]) == 0  # mean 5 ms > 1 ms of idle time
    assert runtime.calls == 0
    assert 0 in p.pending


def test_a_still_slow_model_is_observed_not_reseeded() -> None:
    clock = FakeClock()
    rungs = _rungs(_Timed(clock, 1000))
    st = rungs[0].model.service_time
    st.reseed(1, 5 * MS)
    before = st.expected_ns(1)
    fold_probe(st, 1, 6 * MS)  # not faster than the estimate by the spike factor
    assert st.expected_ns(1) >= before * 0.9


def test_background_probe_runs_on_a_clone_and_is_folded_by_the_owner() -> None:
    clock = FakeClock()
    runtime = _Cloneable(clock, 2000)
    rungs = _rungs(runtime)
    _slow_estimate(rungs[0])
    p = Prober(rungs, clock.now_ns, 50 * MS, background=True)
    p.request(rungs[0], X, last_observed_ns=0)
    p.close()  # joins the worker after it has handled the queued probe
    assert runtime.ran.is_set()
    assert runtime.calls == 0 and runtime.clones == 1  # the owner's instance untouched
    last, failed = [0, 0], [0, 0]
    p.fold_results(last, failed)
    assert rungs[0].model.service_time.expected_ns(1) < 1 * MS
    assert p.background_runs == 1


def test_an_overdue_owner_probe_runs_even_without_idle_budget() -> None:
    clock, runtime, _, p = _requested(2000, overdue_ns=1000 * MS)
    clock.advance(ns=999 * MS)
    assert p.run_pending(1 * MS, [0, 0], [0, 0]) == 0
    clock.advance(ns=1 * MS)
    assert p.run_pending(1 * MS, [0, 0], [0, 0]) == 1
    assert runtime.calls == 1


def test_a_slow_background_timing_is_dropped_not_folded() -> None:
    clock = FakeClock()
    runtime = _Cloneable(clock, 6 * MS)  # still slow: the clone's run costs 6 ms
    rungs = _rungs(runtime)
    _slow_estimate(rungs[0])
    st = rungs[0].model.service_time
    before = (st.mean_ns(1), st.expected_ns(1))
    p = Prober(rungs, clock.now_ns, 50 * MS, background=True)
    p.request(rungs[0], X, last_observed_ns=0)
    p.close()
    last = [0, 0]
    p.fold_results(last, [0, 0])
    assert (st.mean_ns(1), st.expected_ns(1)) == before
    assert last[0] == 0
