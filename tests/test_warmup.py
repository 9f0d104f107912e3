"""Warm-up and calibration: every model rung and batch size exercised, hooks quiet."""

from __future__ import annotations

import pytest
from toyservice import CTX, feed

from tailguard import Service
from tailguard.engine import Engine
from tailguard.errors import FeatureError
from tailguard.testing import FailingRuntime, FakeClock, SlowRuntime
from tailguard.warmup import calibrate, dummy_inputs


class Seen:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []

    def __call__(self, rung: int, n: int, elapsed_ns: int) -> None:
        self.calls.append((rung, n, elapsed_ns))


def test_calibrate_reports_every_model_rung_at_every_size(engine: Engine) -> None:
    seen = Seen()
    calibrate(engine, [1, 2, 8], 3, seen)
    assert sorted({(r, n) for r, n, _ in seen.calls}) == [(0, 1), (0, 2), (0, 8), (1, 1), (1, 2), (1, 8)]
    assert len(seen.calls) == 2 * 3 * 3  # rungs x sizes x repeats (the first call of each is not kept)


def test_calibrate_times_calls_on_the_engine_clock(
    service: Service, engine: Engine, clock: FakeClock
) -> None:
    m = service.models["primary"]
    m.runtime = SlowRuntime(m.runtime, clock, 250e-6)
    seen = Seen()
    calibrate(engine, [4], 1, seen)
    assert [e for r, n, e in seen.calls if r == 0] == [250_000]


def test_small_sizes_are_timed_as_single_calls(service: Service, engine: Engine, clock: FakeClock) -> None:
    m = service.models["primary"]
    m.runtime = SlowRuntime(m.runtime, clock, 100e-6)
    seen = Seen()
    calibrate(engine, [3], 1, seen, singles_below=4)
    assert [e for r, n, e in seen.calls if r == 0] == [300_000]  # three calls of 100 µs


def test_calibration_leaves_counters_and_hooks_as_they_were(engine: Engine) -> None:
    hooks = engine.hooks
    calibrate(engine, [1, 4], 2, Seen())
    assert engine.requests == 0 and engine.hooks == hooks


def test_warm_up_failure_is_a_feature_error(service: Service, engine: Engine) -> None:
    for name in ("primary", "fast"):
        service.models[name].runtime = FailingRuntime(service.models[name].runtime, "raise")
    # The ladder still answers (default rung): warm-up fails only if the path itself raises.
    engine.warm_up(iterations=2, batch_sizes=(2,))
    engine.assembler.fill_one = None  # type: ignore[assignment,method-assign]
    with pytest.raises(FeatureError):
        engine.warm_up(iterations=1, batch_sizes=())


def test_dummy_inputs_use_an_unknown_key_and_the_longest_budget(service: Service, engine: Engine) -> None:
    feed(service, "a")
    key, many_of, ctx, priority = dummy_inputs(engine)
    assert engine.predict(key, ctx).flags & 1  # UNKNOWN_ENTITY
    assert len(many_of(5)) == 5 and set(ctx) == set(CTX) and priority == "bulk"
