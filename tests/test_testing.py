"""Public test doubles and the clock helpers they stand in for."""

from __future__ import annotations

import numpy as np
import pytest

from tailguard.clock import MonotonicClock, ns_to_s, s_to_ns
from tailguard.testing import FailingRuntime, FakeClock, SlowRuntime


class _Ones:
    kind = "ones"
    n_inputs = 2
    n_outputs = 1

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.ones((x.shape[0], 1))


def test_fake_clock_starts_away_from_zero() -> None:
    assert FakeClock().now_ns() > 0


def test_fake_clock_moves_only_when_advanced() -> None:
    c = FakeClock(start_ns=10)
    c.advance(0.5, ns=3)
    assert c.now_ns() == 500_000_013


def test_fake_clock_wall_time_moves_with_it() -> None:
    c = FakeClock()
    before = c.wall_ns()
    c.advance(ns=7)
    assert c.wall_ns() - before == 7


def test_fake_clock_refuses_to_go_back() -> None:
    with pytest.raises(ValueError):
        FakeClock().advance(-1.0)


def test_slow_runtime_advances_the_clock_per_call() -> None:
    c = FakeClock()
    start = c.now_ns()
    rt = SlowRuntime(_Ones(), c, delay_s=2e-3)
    rt.run(np.zeros((1, 2), dtype=np.float32))
    rt.run(np.zeros((1, 2), dtype=np.float32))
    assert (c.now_ns() - start, rt.calls) == (4_000_000, 2)


def test_failing_runtime_raises_when_told() -> None:
    with pytest.raises(RuntimeError):
        FailingRuntime(_Ones(), "raise").run(np.zeros((1, 2), dtype=np.float32))


def test_failing_runtime_answers_nan_when_told() -> None:
    assert np.isnan(FailingRuntime(_Ones(), "nan").run(np.zeros((3, 2), dtype=np.float32))).all()


def test_failing_runtime_delegates_when_not_failing() -> None:
    assert FailingRuntime(_Ones(), None).run(np.zeros((2, 2), dtype=np.float32)).tolist() == [[1.0], [1.0]]


def test_monotonic_clock_does_not_go_back() -> None:
    c = MonotonicClock()
    a = c.now_ns()
    assert c.now_ns() >= a


@pytest.mark.parametrize("seconds", [0.0, 1e-9, 250e-6, 1.5, 3600.0])
def test_seconds_and_nanoseconds_round_trip(seconds: float) -> None:
    assert ns_to_s(s_to_ns(seconds)) == pytest.approx(seconds, rel=1e-12, abs=1e-12)
