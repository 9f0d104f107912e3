"""The engine: features -> ladder -> decision, on a fake clock with controlled runtimes."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from toyservice import (
    BUDGET_NS,
    CTX,
    DEFAULT_P,
    LADDER_WITHOUT_DEFAULT,
    MAX_AGE_NS,
    STATS_DEFAULTS,
    TTL_NS,
    feed,
    order_features,
    primary_row,
    render_spec,
    write_service,
)

from tailguard import BatchDecision, Decision, Flag, Service, load_service
from tailguard.engine import Engine
from tailguard.errors import BudgetExhausted, UnknownPriority, ValidationError
from tailguard.models.runtime import Runtime
from tailguard.testing import FailingRuntime, FakeClock, SlowRuntime

US = 1_000
MS = 1_000_000


# -- helpers -------------------------------------------------------------------------------------
def make_slow(service: Service, clock: FakeClock, model: str, delay_s: float) -> SlowRuntime:
    m = service.models[model]
    m.runtime = SlowRuntime(m.runtime, clock, delay_s)
    return m.runtime


def make_failing(service: Service, model: str, mode: str) -> FailingRuntime:
    m = service.models[model]
    m.runtime = FailingRuntime(m.runtime, mode)
    return m.runtime


def teach(service: Service, model: str, elapsed_ns: int, times: int = 20) -> None:
    """Give a model's service-time estimate a history of ``elapsed_ns`` per call."""
    for _ in range(times):
        service.models[model].service_time.observe(1, elapsed_ns)


def run_on(runtime: Runtime, row: np.ndarray) -> float:
    return float(runtime.run(row)[0, 0])


def stored(service: Service, key: str) -> list[float]:
    return service.store.table("stats").f32[service.store.row("item", key)].tolist()


class NanFirstRow:
    """A runtime that answers NaN for the first row of every call (a partial failure)."""

    def __init__(self, inner: Runtime) -> None:
        self.inner, self.kind = inner, "nan-first-row"
        self.n_inputs, self.n_outputs = inner.n_inputs, inner.n_outputs

    def run(self, x: np.ndarray) -> np.ndarray:
        y = self.inner.run(x).copy()
        y[0] = np.nan
        return y


class Blocking:
    """A runtime that blocks until released (no sleeping: the test sets the event)."""

    def __init__(self, inner: Runtime) -> None:
        self.inner, self.kind = inner, "blocking"
        self.n_inputs, self.n_outputs = inner.n_inputs, inner.n_outputs
        self.release = threading.Event()

    def run(self, x: np.ndarray) -> np.ndarray:
        self.release.wait()
        return self.inner.run(x)


class Recorder:
    """A side-path hook that keeps what it is given."""

    def __init__(self) -> None:
        self.one: list[Decision] = []
        self.batches: list[BatchDecision] = []

    def on_decision(self, decision: Decision) -> None:
        self.one.append(decision)

    def on_batch(self, decision: BatchDecision) -> None:
        self.batches.append(decision)


# -- plain answers -------------------------------------------------------------------------------
def test_known_entity_is_answered_by_the_primary(service: Service, engine: Engine) -> None:
    feed(service, "a")
    d = engine.predict("a", CTX)
    assert (d.rung, d.rung_index, d.flag, d.model_version) == ("primary", 0, Flag.NONE, "primary/1")


def test_primary_answer_is_the_model_on_the_served_features(service: Service, engine: Engine) -> None:
    feed(service, "a", (101.0, 107.0, 103.0))
    expected = run_on(service.models["primary"].runtime, primary_row(stored(service, "a"), CTX))
    assert engine.predict("a", CTX).output("p") == expected


def test_fast_rung_reads_its_own_columns_in_its_own_order(service: Service, engine: Engine) -> None:
    feed(service, "a", (101.0, 107.0, 103.0))
    make_failing(service, "primary", "raise")
    _, ratio = order_features(CTX["price"], CTX["size"])
    row = np.array([[ratio, stored(service, "a")[0]]], dtype=np.float32)
    expected = run_on(service.models["fast"].runtime, row)
    assert engine.predict("a", CTX).output("p") == expected


def test_decision_names_the_default_priority_class(engine: Engine) -> None:
    assert engine.predict("a", CTX).priority == "normal"


def test_decision_names_the_requested_priority_class(engine: Engine) -> None:
    assert engine.predict("a", CTX, priority="bulk").priority == "bulk"


def test_single_entity_service_accepts_a_key_mapping(service: Service, engine: Engine) -> None:
    feed(service, "a")
    assert engine.predict({"item": "a"}, CTX).outputs.tolist() == engine.predict("a", CTX).outputs.tolist()


# -- unknown and stale entities ----------------------------------------------------------------------
def test_unknown_entity_gets_the_declared_defaults(service: Service, engine: Engine) -> None:
    expected = run_on(service.models["primary"].runtime, primary_row(STATS_DEFAULTS, CTX))
    assert engine.predict("never-seen", CTX).output("p") == expected


def test_unknown_entity_is_flagged_not_raised(engine: Engine) -> None:
    d = engine.predict("never-seen", CTX)
    assert (d.rung, d.flag) == ("primary", Flag.UNKNOWN_ENTITY)


def test_unknown_entities_are_counted(engine: Engine) -> None:
    engine.predict("x", CTX)
    engine.predict("y", CTX)
    assert engine.unknown_entities == 2


def test_features_older_than_ttl_are_flagged_stale(
    service: Service, engine: Engine, clock: FakeClock
) -> None:
    feed(service, "a")
    clock.advance(ns=TTL_NS + 1)
    assert engine.predict("a", CTX).flag == Flag.STALE_FEATURE
    assert engine.stale == 1


def test_stale_features_are_served_as_defaults(service: Service, engine: Engine, clock: FakeClock) -> None:
    feed(service, "a", (140.0, 150.0))
    clock.advance(ns=TTL_NS + 1)
    expected = run_on(service.models["primary"].runtime, primary_row(STATS_DEFAULTS, CTX))
    assert engine.predict("a", CTX).output("p") == expected


def test_features_exactly_ttl_old_are_fresh(service: Service, engine: Engine, clock: FakeClock) -> None:
    feed(service, "a")
    clock.advance(ns=TTL_NS)
    assert engine.predict("a", CTX).flag == Flag.NONE


# -- failures down the ladder ------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["raise", "nan"])
def test_failing_primary_falls_to_the_fast_rung(service: Service, engine: Engine, mode: str) -> None:
    feed(service, "a")
    make_failing(service, "primary", mode)
    d = engine.predict("a", CTX)
    assert (d.rung, d.model_version) == ("fast", "fast/1")
    assert d.flag == Flag.MODEL_FAILED | Flag.FALLBACK


@pytest.mark.parametrize("mode", ["raise", "nan"])
def test_failing_primary_is_counted(service: Service, engine: Engine, mode: str) -> None:
    make_failing(service, "primary", mode)
    engine.predict("a", CTX)
    engine.predict("a", CTX)
    assert engine.failed == [2, 0, 0, 0]


def test_last_good_serves_the_entitys_previous_answer(service: Service, engine: Engine) -> None:
    feed(service, "a")
    before = engine.predict("a", CTX)
    make_failing(service, "primary", "raise")
    make_failing(service, "fast", "nan")
    d = engine.predict("a", CTX)
    assert (d.rung, d.model_version) == ("last_good", "")
    assert d.outputs.tolist() == before.outputs.tolist()


def test_last_good_is_per_entity(service: Service, engine: Engine) -> None:
    feed(service, "a")
    feed(service, "b")
    engine.predict("a", CTX)
    make_failing(service, "primary", "raise")
    make_failing(service, "fast", "raise")
    assert engine.predict("b", CTX).rung == "default"


def test_last_good_older_than_max_age_is_not_served(
    service: Service, engine: Engine, clock: FakeClock
) -> None:
    feed(service, "a")
    engine.predict("a", CTX)
    make_failing(service, "primary", "raise")
    make_failing(service, "fast", "raise")
    clock.advance(ns=MAX_AGE_NS + 1)
    assert engine.predict("a", CTX).rung == "default"


def test_last_good_exactly_max_age_old_is_served(service: Service, engine: Engine, clock: FakeClock) -> None:
    feed(service, "a")
    engine.predict("a", CTX)
    make_failing(service, "primary", "raise")
    make_failing(service, "fast", "raise")
    clock.advance(ns=MAX_AGE_NS)
    assert engine.predict("a", CTX).rung == "last_good"


def test_default_rung_answers_when_nothing_else_can(service: Service, engine: Engine) -> None:
    make_failing(service, "primary", "raise")
    make_failing(service, "fast", "nan")
    d = engine.predict("never-seen", CTX)
    assert (d.rung, d.outputs.tolist(), d.model_version) == ("default", [DEFAULT_P], "")
    assert d.flag == Flag.UNKNOWN_ENTITY | Flag.MODEL_FAILED | Flag.FALLBACK


def test_without_default_rung_an_unanswerable_request_raises_budget_exhausted(
    toy_copy: Path, clock: FakeClock
) -> None:
    write_service(toy_copy, spec_text=render_spec(ladder=LADDER_WITHOUT_DEFAULT))
    svc = load_service(toy_copy, clock=clock, freeze_gc=False)
    make_failing(svc, "primary", "raise")
    make_failing(svc, "fast", "raise")
    with pytest.raises(BudgetExhausted):
        svc.engine.predict("never-seen", CTX)


# -- deadlines and learned slowness ---------------------------------------------------------------
def test_timings_come_from_the_injected_clock(service: Service, engine: Engine, clock: FakeClock) -> None:
    make_slow(service, clock, "primary", 300e-6)
    d = engine.predict("a", CTX)
    assert d.timings_ns[2] == 300 * US
    assert d.timings_ns[4] == sum(d.timings_ns[:4])


def test_an_answer_after_the_deadline_is_flagged_and_counted(
    service: Service, engine: Engine, clock: FakeClock
) -> None:
    make_slow(service, clock, "primary", 5e-3)
    d = engine.predict("a", CTX)
    assert (d.rung, bool(d.flag & Flag.DEADLINE_MISSED), engine.deadline_missed) == ("primary", True, 1)


def test_once_slowness_is_learned_fast_answers_within_budget(
    service: Service, engine: Engine, clock: FakeClock
) -> None:
    feed(service, "a")
    make_slow(service, clock, "primary", 5e-3)  # over the 2 ms normal budget
    make_slow(service, clock, "fast", 200e-6)
    engine.predict("a", CTX)  # the first call learns the slowness
    later = [engine.predict("a", CTX) for _ in range(20)]
    assert {d.rung for d in later} == {"fast"}
    assert all(d.timings_ns[4] <= BUDGET_NS["normal"] for d in later)
    assert not any(d.flag & Flag.DEADLINE_MISSED for d in later)


def test_a_primary_that_turns_slow_is_skipped_from_its_third_slow_call(
    service: Service, engine: Engine, clock: FakeClock
) -> None:
    primary = make_slow(service, clock, "primary", 100e-6)
    make_slow(service, clock, "fast", 100e-6)
    for _ in range(10):
        engine.predict("a", CTX)
    primary.delay_s = 20e-3
    assert [engine.predict("a", CTX).rung for _ in range(3)] == ["primary", "primary", "fast"]


def test_a_one_off_spike_does_not_make_the_engine_skip_the_primary(
    service: Service, engine: Engine, clock: FakeClock
) -> None:
    primary = make_slow(service, clock, "primary", 100e-6)
    for _ in range(10):
        engine.predict("a", CTX)
    primary.delay_s = 20e-3
    engine.predict("a", CTX)
    primary.delay_s = 100e-6
    assert {engine.predict("a", CTX).rung for _ in range(10)} == {"primary"}
    assert service.models["primary"].service_time.spikes == 1


def test_a_request_budget_can_shorten_the_class_budget(service: Service, engine: Engine) -> None:
    teach(service, "primary", 1 * MS)  # fits the 2 ms normal budget
    assert engine.predict("a", CTX).rung == "primary"
    assert engine.predict("a", CTX, budget_s=0.5e-3).rung == "fast"


def test_a_request_budget_cannot_lengthen_the_class_budget(service: Service, engine: Engine) -> None:
    teach(service, "primary", 3 * MS)  # over the 2 ms normal budget
    assert engine.predict("a", CTX, budget_s=1.0).rung == "fast"


def test_priority_classes_carry_their_own_budgets(service: Service, engine: Engine) -> None:
    teach(service, "primary", 1 * MS)  # over critical (500 us), within normal (2 ms)
    assert engine.predict("a", CTX, priority="critical").rung == "fast"
    assert engine.predict("a", CTX, priority="normal").rung == "primary"


def test_skipped_models_are_counted(service: Service, engine: Engine) -> None:
    teach(service, "primary", 3 * MS)
    engine.predict("a", CTX)
    assert engine.skipped == [1, 0, 0, 0]


def test_a_skipped_model_that_became_fast_recovers_after_one_probe(
    service: Service, engine: Engine, clock: FakeClock
) -> None:
    primary = make_slow(service, clock, "primary", 5e-3)
    make_slow(service, clock, "fast", 100e-6)
    engine.predict("a", CTX)  # learns 5 ms: skipped from now on
    primary.delay_s = 100e-6
    clock.advance(1.0)  # past the probe interval
    assert engine.predict("a", CTX).rung == "fast"  # skipped, and a probe is queued
    assert engine.run_side_path() == 1
    assert engine.predict("a", CTX).rung == "primary"


def test_no_probe_is_queued_within_the_probe_interval(
    service: Service, engine: Engine, clock: FakeClock
) -> None:
    make_slow(service, clock, "primary", 5e-3)
    engine.predict("a", CTX)
    engine.predict("a", CTX)  # skipped right after the last observation
    assert engine.run_side_path() == 0


def test_a_probe_that_does_not_fit_the_side_path_budget_waits(
    service: Service, engine: Engine, clock: FakeClock
) -> None:
    make_slow(service, clock, "primary", 5e-3)
    engine.predict("a", CTX)
    clock.advance(1.0)
    engine.predict("a", CTX)  # skipped: a probe is queued
    assert engine.run_side_path(budget_ns=1 * MS) == 0  # a 5 ms model does not fit in 1 ms
    assert engine.run_side_path() == 1


def test_an_isolated_model_that_overruns_is_abandoned_for_the_next_rung(
    toy_copy: Path, clock: FakeClock
) -> None:
    write_service(toy_copy, spec_text=render_spec(primary_isolation="thread"))
    svc = load_service(toy_copy, clock=clock, freeze_gc=False)
    iso = svc.models["primary"].runtime
    blocker = Blocking(iso.inner)  # type: ignore[attr-defined]
    iso.inner = blocker  # type: ignore[attr-defined]
    try:
        d = svc.engine.predict("a", CTX)
        assert not blocker.release.is_set()  # the reply came back while the model was blocked
        assert (d.rung, d.flag) == ("fast", Flag.UNKNOWN_ENTITY | Flag.FALLBACK)
        assert svc.engine.timeouts == [1, 0, 0, 0]
    finally:
        blocker.release.set()
        iso.close()  # type: ignore[attr-defined]


# -- invalid requests ---------------------------------------------------------------------------
INVALID = [
    pytest.param(lambda e: e.predict(42, CTX), "keys.item", id="wrong-key-type"),
    pytest.param(lambda e: e.predict({"shop": "a"}, CTX), "keys", id="missing-entity-key"),
    pytest.param(lambda e: e.predict("a", {"price": 1.0}), "context.size", id="missing-context-field"),
    pytest.param(
        lambda e: e.predict("a", {"price": "cheap", "size": 1.0}), "context.price", id="text-context"
    ),
    pytest.param(lambda e: e.predict("a", {"price": True, "size": 1.0}), "context.price", id="bool-context"),
    pytest.param(lambda e: e.predict("a", None), "context", id="no-context"),
    pytest.param(lambda e: e.predict("a", CTX, priority="urgent"), "priority", id="unknown-priority"),
    pytest.param(lambda e: e.predict("a", CTX, budget_s=0.0), "budget", id="zero-budget"),
    pytest.param(lambda e: e.predict("a", CTX, budget_s=-1e-3), "budget", id="negative-budget"),
    pytest.param(lambda e: e.predict("a", CTX, budget_s=float("nan")), "budget", id="nan-budget"),
    pytest.param(lambda e: e.predict("a", CTX, budget_s=float("inf")), "budget", id="infinite-budget"),
    pytest.param(
        lambda e: e.predict_batch(["a", "b"], {"price": [1.0, 2.0, 3.0], "size": 1.0}),
        "context.price",
        id="batch-context-shape",
    ),
    pytest.param(
        lambda e: e.predict_batch(["a", "b"], {"price": ["x", "y"], "size": 1.0}),
        "context.price",
        id="batch-text-context",
    ),
    pytest.param(
        lambda e: e.predict_batch(["a", "b"], {"price": 1.0}), "context.size", id="batch-missing-field"
    ),
    pytest.param(lambda e: e.predict_batch(["a", 7], CTX), "keys.item", id="batch-wrong-key-type"),
    pytest.param(lambda e: e.predict_batch("ab", CTX), "keys", id="batch-keys-not-a-sequence"),
    pytest.param(lambda e: e.predict_batch([], CTX), "keys", id="batch-empty"),
    pytest.param(
        lambda e: e.predict_batch(["a"], CTX, priority="urgent"), "priority", id="batch-unknown-priority"
    ),
    pytest.param(lambda e: e.predict_batch(["a"], CTX, budget_s=0.0), "budget", id="batch-zero-budget"),
]


@pytest.mark.parametrize(("call", "field"), INVALID)
def test_invalid_request_raises_validation_error_naming_the_field(
    engine: Engine, call: Any, field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        call(engine)
    assert info.value.field == field


def test_unknown_priority_is_its_own_validation_error(engine: Engine) -> None:
    with pytest.raises(UnknownPriority):
        engine.predict("a", CTX, priority="urgent")


def test_engine_keeps_serving_after_invalid_requests(service: Service, engine: Engine) -> None:
    feed(service, "a")
    for param in INVALID:
        with pytest.raises(ValidationError):
            param.values[0](engine)
    d = engine.predict("a", CTX)
    assert (d.rung, d.flag) == ("primary", Flag.NONE)


def test_invalid_requests_are_counted_not_answered(engine: Engine) -> None:
    for param in INVALID:
        with pytest.raises(ValidationError):
            param.values[0](engine)
    assert (engine.invalid, engine.requests) == (len(INVALID), 0)


@pytest.mark.parametrize("value", ["104.5", True])
def test_batch_rejects_non_numeric_context_like_predict(engine: Engine, value: object) -> None:
    with pytest.raises(ValidationError):
        engine.predict_batch(["a"], {"price": value, "size": 3.0})


# -- batches -----------------------------------------------------------------------------------
def test_batch_rows_equal_predict_for_each_key(service: Service, engine: Engine, clock: FakeClock) -> None:
    feed(service, "old", (120.0, 121.0))
    clock.advance(ns=TTL_NS + 1)
    for key, prices in (("a", (101.0, 103.0)), ("b", (96.0, 94.0)), ("c", (108.0,))):
        feed(service, key, prices)
    keys = ["a", "never-seen", "b", "old", "c", "a"]
    price = np.array([101.0, 99.5, 104.0, 97.0, 110.0, 90.0])
    batch = engine.predict_batch(keys, {"price": price, "size": 3.0})
    singles = [engine.predict(k, {"price": float(p), "size": 3.0}) for k, p in zip(keys, price, strict=True)]
    assert batch.outputs.tolist() == [d.outputs.tolist() for d in singles]
    assert batch.flags.tolist() == [d.flags for d in singles]
    assert batch.rungs.tolist() == [d.rung_index for d in singles]


def test_batch_with_failing_primary_falls_to_fast_per_row(service: Service, engine: Engine) -> None:
    make_failing(service, "primary", "raise")
    batch = engine.predict_batch(["a", "b"], CTX)
    assert batch.rungs.tolist() == [1, 1]
    expected = Flag.UNKNOWN_ENTITY | Flag.MODEL_FAILED | Flag.FALLBACK
    assert [Flag(f) for f in batch.flags.tolist()] == [expected, expected]


def test_batch_rows_a_model_answers_non_finite_fall_to_the_next_rung(
    service: Service, engine: Engine
) -> None:
    m = service.models["primary"]
    m.runtime = NanFirstRow(m.runtime)
    batch = engine.predict_batch(["a", "b", "c"], CTX)
    assert batch.rungs.tolist() == [1, 0, 0]
    assert [bool(f & Flag.MODEL_FAILED) for f in batch.flags.tolist()] == [True, False, False]


def test_batch_rows_answered_before_a_rung_raises_are_not_flagged_failed(
    service: Service, engine: Engine
) -> None:
    m = service.models["primary"]
    m.runtime = NanFirstRow(m.runtime)
    make_failing(service, "fast", "raise")
    batch = engine.predict_batch(["a", "b"], CTX)
    assert not batch.flags[1] & Flag.MODEL_FAILED


def test_batch_serves_last_good_rows(service: Service, engine: Engine) -> None:
    feed(service, "a")
    feed(service, "b")
    first = engine.predict_batch(["a", "b"], CTX)
    make_failing(service, "primary", "raise")
    make_failing(service, "fast", "raise")
    again = engine.predict_batch(["a", "b", "never-seen"], CTX)
    assert again.rungs.tolist() == [2, 2, 3]
    assert again.outputs[:2].tolist() == first.outputs.tolist()


def test_batch_without_default_raises_budget_exhausted(toy_copy: Path, clock: FakeClock) -> None:
    write_service(toy_copy, spec_text=render_spec(ladder=LADDER_WITHOUT_DEFAULT))
    svc = load_service(toy_copy, clock=clock, freeze_gc=False)
    make_failing(svc, "primary", "raise")
    make_failing(svc, "fast", "raise")
    with pytest.raises(BudgetExhausted):
        svc.engine.predict_batch(["x", "y"], CTX)


def test_batch_scalar_context_is_shared_by_every_row(service: Service, engine: Engine) -> None:
    feed(service, "a")
    shared = engine.predict_batch(["a", "b"], CTX)
    columns = engine.predict_batch(["a", "b"], {k: np.full(2, v) for k, v in CTX.items()})
    assert shared.outputs.tolist() == columns.outputs.tolist()


def test_batch_accepts_a_numpy_array_of_keys(service: Service, engine: Engine) -> None:
    feed(service, "a")
    assert engine.predict_batch(np.array(["a", "b"]), CTX).flags.tolist() == [0, int(Flag.UNKNOWN_ENTITY)]


def test_batch_larger_than_the_preallocated_buffer_is_answered(engine: Engine) -> None:
    keys = [f"k{i}" for i in range(1500)]
    batch = engine.predict_batch(keys, CTX)
    single = engine.predict("k0", CTX)
    assert len(batch) == 1500
    assert batch.outputs[-1].tolist() == single.outputs.tolist()


def test_batch_counts_rows_and_unknown_entities(service: Service, engine: Engine) -> None:
    feed(service, "a")
    engine.predict_batch(["a", "x", "y"], CTX)
    assert (engine.requests, engine.rows, engine.unknown_entities) == (1, 3, 2)


# -- hooks and statistics ---------------------------------------------------------------------------
def test_hooks_receive_every_decision(toy_dir: Path, clock: FakeClock) -> None:
    hook = Recorder()
    svc = load_service(toy_dir, clock=clock, hooks=[hook], freeze_gc=False)
    d = svc.engine.predict("a", CTX)
    b = svc.engine.predict_batch(["a", "b"], CTX)
    assert (hook.one, hook.batches) == ([d], [b])


def test_every_installed_hook_is_called(engine: Engine) -> None:
    first, second = Recorder(), Recorder()
    engine.set_hooks([first, second])
    engine.predict("a", CTX)
    engine.predict_batch(["a"], CTX)
    assert [len(h.one) + len(h.batches) for h in (first, second)] == [2, 2]


def test_statistics_count_answers_per_rung(service: Service, engine: Engine) -> None:
    engine.predict("a", CTX)
    make_failing(service, "primary", "raise")
    engine.predict("a", CTX)
    rungs = engine.statistics()["rungs"]
    assert [rungs[r]["answered"] for r in ("primary", "fast", "last_good", "default")] == [1, 1, 0, 0]
    assert rungs["primary"]["failed"] == 1


# -- scheduler hooks: absolute deadlines and degraded starts -----------------------------------------
def test_start_rung_skips_the_rungs_above_it(service: Service, engine: Engine) -> None:
    feed(service, "a")
    d = engine.predict("a", CTX, start_rung=1)
    assert (d.rung, bool(d.flag & Flag.DEGRADED), engine.answered[0]) == ("fast", True, 0)


def test_start_rung_at_the_default_answers_the_default(service: Service, engine: Engine) -> None:
    d = engine.predict("a", CTX, start_rung=len(engine.rungs) - 1)
    assert (d.rung, d.output("p")) == ("default", DEFAULT_P)


def test_batch_start_rung_answers_every_row_from_that_rung(service: Service, engine: Engine) -> None:
    d = engine.predict_batch(["a", "b"], CTX, start_rung=1)
    assert d.rungs.tolist() == [1, 1] and (d.flags & Flag.DEGRADED).all()


def test_batch_start_rung_below_the_models_walks_the_rest_of_the_ladder(
    service: Service, engine: Engine
) -> None:
    d = engine.predict_batch(["a", "b"], CTX, start_rung=2)  # last_good: nothing cached yet
    assert [d.rung_names[i] for i in d.rungs.tolist()] == ["default", "default"]


def test_an_absolute_deadline_counts_time_spent_before_the_call(
    service: Service, engine: Engine, clock: FakeClock
) -> None:
    teach(service, "primary", 100 * US)
    teach(service, "fast", 1 * US)
    deadline = clock.now_ns() + 50 * US  # the class budget would fit the primary; this does not
    assert engine.predict("a", CTX, deadline_ns=deadline).rung == "fast"


def test_a_deadline_already_passed_is_flagged_missed(engine: Engine, clock: FakeClock) -> None:
    d = engine.predict("a", CTX, deadline_ns=clock.now_ns() - 1)
    assert bool(d.flag & Flag.DEADLINE_MISSED)


def test_expected_ns_is_the_models_estimate_and_zero_elsewhere(service: Service, engine: Engine) -> None:
    teach(service, "primary", 100 * US)
    assert engine.expected_ns(0, 1) == int(service.models["primary"].service_time.expected_ns(1))
    assert engine.expected_ns(len(engine.rungs) - 1, 64) == 0
