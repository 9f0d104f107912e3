"""Scheduler invariants under random load, with a simulated dispatcher on a fake clock:
every job comes back exactly once, nothing is batched to finish late (and, with exact
costs, nothing is answered late), a higher class waits behind at most one lower-class batch
per starvation-guard interval, bounds hold and the counters add up."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from schedsim import MS, US, Arrival, Ledger, linear_cost, noisy, simulate

from tailguard.scheduler import (
    Admit,
    ClassPolicy,
    CostModel,
    OnTimeout,
    RateLimit,
    Reason,
    Scheduler,
    SchedulerConfig,
)

# Each example runs a whole simulation; fewer examples keep the suite fast.
SIM = settings(max_examples=60)


@st.composite
def setups(draw: st.DrawFn) -> tuple[SchedulerConfig, list[int], list[int]]:
    n_classes = draw(st.integers(1, 3))
    classes = tuple(
        ClassPolicy(
            f"c{i}", i + 1,
            draw(st.sampled_from([150 * US, 400 * US, MS, 3 * MS, 20 * MS])),
            draw(st.integers(1, 40)),
            draw(st.sampled_from(OnTimeout)),
        )
        for i in range(n_classes)
    )
    n_model = draw(st.integers(1, 3))
    n_rungs = n_model + draw(st.integers(0, 2))
    cfg = SchedulerConfig(
        classes=classes,
        n_rungs=n_rungs,
        cheap_rungs=frozenset(range(n_model, n_rungs)),
        max_batch_size=draw(st.integers(1, 16)),
        max_queue_delay_ns=draw(st.sampled_from([0, 0, 50 * US, 300 * US])),
        starvation_guard_ns=draw(st.sampled_from([0, 200 * US, MS])),
        max_total_queued=draw(st.integers(1, 60)),
        rate_limit=draw(st.sampled_from([None, RateLimit(20_000.0, 4)])),
        retry_after_floor_ns=US,
    )
    base = sorted(draw(st.lists(st.integers(5 * US, 150 * US), min_size=n_model, max_size=n_model)),
                  reverse=True) + [0] * (n_rungs - n_model)
    per_row = draw(st.lists(st.integers(0, 10 * US), min_size=n_model, max_size=n_model))
    per_row += [0] * (n_rungs - n_model)
    return cfg, base, per_row


def arrivals(n_classes: int, n_rungs: int) -> st.SearchStrategy[list[Arrival]]:
    one = st.builds(
        Arrival,
        gap_ns=st.sampled_from([0, 0, 5 * US, 20 * US, 60 * US, 300 * US]),
        cls=st.integers(0, n_classes - 1),
        budget_ns=st.sampled_from([None, None, None, 30 * US, 200 * US, 2 * MS]),
        rows=st.sampled_from([1, 1, 1, 1, 2, 5]),
        batchable=st.sampled_from([True, True, True, False]),
        client=st.sampled_from([None, 0, 1, 2]),
        rung=st.sampled_from([0, 0, 0, 0, n_rungs - 1]),
        cancel=st.sampled_from([None] * 8 + [0, 1, 3]),
        shed=st.sampled_from([0] * 20 + [1, 3]),
    )
    return st.lists(one, min_size=10, max_size=150)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    cfg, base, per_row = draw(setups())
    return {
        "cfg": cfg,
        "true_cost": linear_cost(base, per_row),
        "arrivals": draw(arrivals(len(cfg.classes), cfg.n_rungs)),
        "seed": draw(st.integers(0, 2**32)),
        "drain_after": draw(st.sampled_from([None, None, None, 10, 40])),
    }


def run(sc: dict[str, Any], exact: bool) -> tuple[Scheduler[int], Ledger]:
    cfg = sc["cfg"]
    sched: Scheduler[int] = Scheduler(cfg, CostModel(cfg.n_rungs, sc["true_cost"]))
    service = sc["true_cost"] if exact else noisy(sc["true_cost"], sc["seed"])
    return sched, simulate(sched, sc["arrivals"], service, drain_after=sc["drain_after"])


@SIM
@given(sc=scenarios(), exact=st.booleans())
def test_every_job_comes_back_exactly_once(sc: dict[str, Any], exact: bool) -> None:
    sched, led = run(sc, exact)
    assert sched.total_queued == 0
    assert all(led.returned[j.payload] == 1 for j in led.jobs), [
        (j, led.returned[j.payload]) for j in led.jobs if led.returned[j.payload] != 1
    ]
    assert not any(j.queued for j in led.jobs)


@SIM
@given(sc=scenarios(), exact=st.booleans())
def test_no_batch_is_formed_to_finish_after_a_deadline_in_it(sc: dict[str, Any], exact: bool) -> None:
    _, led = run(sc, exact)
    assert led.mispredicted == []


@SIM
@given(sc=scenarios())
def test_with_exact_costs_nothing_is_answered_late(sc: dict[str, Any]) -> None:
    # Service times are constant per power-of-two bucket and the prior knows them, so the
    # learned expectation (mean + 4 deviations) is never below the truth.
    _, led = run(sc, exact=True)
    assert led.late == []


@SIM
@given(sc=scenarios(), exact=st.booleans())
def test_a_higher_class_waits_behind_at_most_one_lower_batch_per_guard_interval(
    sc: dict[str, Any], exact: bool,
) -> None:
    sched, led = run(sc, exact)
    guard = sched.config.starvation_guard_ns
    times = led.lower_over_higher
    if guard == 0:
        assert times == []
    else:
        assert all(b - a >= guard for a, b in itertools.pairwise(times)), times
    assert len(times) == sched.statistics()["starvation_guard"] or guard == 0


@SIM
@given(sc=scenarios(), exact=st.booleans())
def test_queue_bounds_hold_throughout(sc: dict[str, Any], exact: bool) -> None:
    _, led = run(sc, exact)
    assert led.bound_violations == []


@SIM
@given(sc=scenarios(), exact=st.booleans())
def test_the_counters_add_up(sc: dict[str, Any], exact: bool) -> None:
    sched, led = run(sc, exact)
    s = sched.statistics()
    names = sched.names

    def total(key: str) -> int:
        return sum(s[key].values())

    for n in names:
        assert s["submitted"][n] == s["admitted"][n] + s["answered_now"][n] + s["refused"][n]
        assert s["admitted"][n] == (s["batched"][n] + s["expired"][n] + s["shed_jobs"][n]
                                    + s["cancelled"][n] + s["drained"][n] + s["queued"][n])
    assert total("submitted") == len(led.jobs)
    assert total("answered_now") == led.door[Admit.ANSWER_NOW]
    assert total("refused") == led.door[Admit.REJECTED]
    assert total("admitted") == led.door[Admit.QUEUED]
    assert total("batched") == led.batched_jobs
    assert s["batches"] == len(led.batches) == sum(s["batch_sizes"].values())
    assert total("cancelled") == led.cancelled
    assert total("drained") == led.drained
    shed = sum(n for (_, r), n in led.dropped.items() if r is Reason.SHED_OVERLOAD)
    assert total("shed_jobs") == shed == sum(sum(v.values()) for v in s["shed"].values())
    assert total("expired") == sum(n for (_, r), n in led.dropped.items() if r is Reason.EXPIRED)
    labelled = sum(sum(v.values()) for v in s["rejected"].values())
    assert labelled == total("refused") + led.dropped[(Admit.REJECTED, Reason.EXPIRED)]
