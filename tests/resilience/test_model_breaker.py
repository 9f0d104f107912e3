"""Circuit breakers on model rungs: a model that keeps failing (raising, non-finite outputs,
overrunning its isolated deadline) is short-circuited to the next rung without being called,
tried again after each open period, and closed by a good trial;
per rung in ``[[ladder]] breaker_failures / breaker_open``, 0 switches it off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from toyservice import CTX, LADDER, render_spec, write_service

from tailguard import Service, load_service
from tailguard.decision import Flag
from tailguard.registry.swap import swap_model
from tailguard.resilience.breaker import BreakerState
from tailguard.testing import FailingRuntime, FakeClock


def failing(svc: Service, mode: str | None = "raise") -> FailingRuntime:
    m = svc.models["primary"]
    m.runtime = rt = FailingRuntime(m.runtime, mode)
    return rt


def test_a_raising_model_is_short_circuited_then_recovers_through_a_trial(service: Service,
                                                                          clock: FakeClock) -> None:
    rt = failing(service)
    eng = service.engine
    primary = eng.rungs[0]
    assert primary.breaker is not None and primary.breaker.state is BreakerState.CLOSED
    for _ in range(5):  # five failures in a row open it
        d = eng.predict("a", CTX)
        assert d.rung == "fast" and d.flag & Flag.MODEL_FAILED
    assert primary.breaker.state is BreakerState.OPEN and rt.calls == 5
    for _ in range(20):  # open: answered by the next rung without calling the model
        d = eng.predict("a", CTX)
        assert d.rung == "fast" and d.flag & Flag.MODEL_FAILED and d.flag & Flag.FALLBACK
    assert rt.calls == 5
    stats = eng.statistics()["rungs"]["primary"]
    assert (stats["failed"], stats["short_circuited"], stats["breaker"]) == (5, 20, "open")
    # After the open period one trial goes through; it fails: open again, for the same period
    # (a model that heals serves again within breaker_open, however long it failed).
    clock.advance(1.0)
    assert eng.predict("a", CTX).rung == "fast" and rt.calls == 6
    assert primary.breaker.state is BreakerState.OPEN
    clock.advance(0.5)
    eng.predict("a", CTX)
    assert rt.calls == 6  # within the period
    # The model heals; the next trial closes the breaker and the primary answers again.
    rt.mode = None
    clock.advance(0.5)
    d = eng.predict("a", CTX)
    assert (d.rung, rt.calls, primary.breaker.state) == ("primary", 7, BreakerState.CLOSED)
    assert eng.predict("a", CTX).rung == "primary"


def test_non_finite_outputs_count_as_failures_and_batches_see_the_breaker(service: Service) -> None:
    rt = failing(service, "nan")
    eng = service.engine
    for _ in range(5):
        b = eng.predict_batch(["a", "b"], {"price": [1.0, 2.0], "size": 1.0})
        assert set(b.rungs.tolist()) == {1}
    assert eng.rungs[0].breaker is not None and eng.rungs[0].breaker.state is BreakerState.OPEN
    b = eng.predict_batch(["a", "b"], {"price": [1.0, 2.0], "size": 1.0})
    assert rt.calls == 5 and set(b.rungs.tolist()) == {1}
    assert np.all(b.flags & Flag.MODEL_FAILED)


def test_a_success_forgets_earlier_failures(service: Service) -> None:
    rt = failing(service)
    eng = service.engine
    for _ in range(4):
        eng.predict("a", CTX)
    rt.mode = None
    assert eng.predict("a", CTX).rung == "primary"
    rt.mode = "raise"
    for _ in range(4):
        eng.predict("a", CTX)
    assert eng.rungs[0].breaker is not None and eng.rungs[0].breaker.state is BreakerState.CLOSED
    assert rt.calls == 9


def test_breaker_failures_zero_switches_it_off(toy_copy: Path, clock: FakeClock) -> None:
    ladder = LADDER.replace('model = "primary"\n', 'model = "primary"\nbreaker_failures = 0\n', 1)
    write_service(toy_copy, spec_text=render_spec().replace(LADDER, ladder))
    svc = load_service(toy_copy, clock=clock, freeze_gc=False)
    assert svc.engine.rungs[0].breaker is None and svc.engine.rungs[1].breaker is not None
    rt = failing(svc)
    for _ in range(30):
        assert svc.engine.predict("a", CTX).rung == "fast"
    assert rt.calls == 30


def test_a_custom_open_period(toy_copy: Path, clock: FakeClock) -> None:
    ladder = LADDER.replace('model = "primary"\n', 'model = "primary"\nbreaker_failures = 2\n'
                            'breaker_open = "250ms"\n', 1)
    write_service(toy_copy, spec_text=render_spec().replace(LADDER, ladder))
    svc = load_service(toy_copy, clock=clock, freeze_gc=False)
    rt = failing(svc)
    for _ in range(4):
        svc.engine.predict("a", CTX)
    assert rt.calls == 2
    clock.advance(0.25)
    svc.engine.predict("a", CTX)
    assert rt.calls == 3


def test_a_swapped_in_version_starts_with_a_closed_breaker(toy_copy: Path, clock: FakeClock) -> None:
    svc = load_service(toy_copy, clock=clock, freeze_gc=False)
    failing(svc)
    for _ in range(5):
        svc.engine.predict("a", CTX)
    assert svc.engine.rungs[0].breaker is not None and svc.engine.rungs[0].breaker.state is BreakerState.OPEN
    report = swap_model(svc, "primary", "1", warmup=1)
    assert report.new_version == "1"
    br = svc.engine.rungs[0].breaker
    assert br is not None and br.state is BreakerState.CLOSED
    assert svc.engine.predict("a", CTX).rung == "primary"
