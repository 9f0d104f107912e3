"""Test helpers for the scheduler: small configs and a simulated dispatcher on a fake clock.

The simulated dispatcher is a discrete-event loop: arrivals at drawn times are submitted,
one batch runs at a time (its service time from a ``service(rung, rows)`` function), the
loop sleeps on the fake clock until the next arrival, batch end or ``wake_at_ns``.  It keeps
a ledger of how every job came back so tests can check the scheduler's invariants.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tailguard.scheduler import (
    Admit,
    Batch,
    ClassPolicy,
    CostModel,
    Job,
    OnTimeout,
    Reason,
    Scheduler,
    SchedulerConfig,
    Verdict,
)
from tailguard.testing import FakeClock

US = 1_000
MS = 1_000_000


def bucket_upper(n: int) -> int:
    """The upper batch size of ``n``'s power-of-two bucket (ServiceTime's granularity)."""
    return 1 << (n - 1).bit_length()


def linear_cost(base: list[int], per_row: list[int]) -> Callable[[int, int], int]:
    """A service time constant within each power-of-two bucket (so ServiceTime learns it
    exactly from above): ``base[r] + per_row[r] * bucket_upper(n)``."""

    def cost(rung: int, n: int) -> int:
        return base[rung] + per_row[rung] * bucket_upper(n)

    return cost


def three_classes(on_timeout: OnTimeout = OnTimeout.DEGRADE, max_queue_size: int = 1024,
                  ) -> tuple[ClassPolicy, ...]:
    return (
        ClassPolicy("critical", 1, 1 * MS, max_queue_size, on_timeout),
        ClassPolicy("normal", 2, 5 * MS, max_queue_size, on_timeout),
        ClassPolicy("bulk", 3, 50 * MS, max_queue_size, on_timeout),
    )


def config(**kw: object) -> SchedulerConfig:
    """Three classes, rungs 0 (primary) and 1 (fast) as models, 2 (last good) and 3
    (default) cheap; overridable by keyword."""
    args: dict[str, object] = {
        "classes": three_classes(),
        "n_rungs": 4,
        "cheap_rungs": frozenset({2, 3}),
        "max_batch_size": 8,
        "max_queue_delay_ns": 0,
        "starvation_guard_ns": 5 * MS,
        "max_total_queued": 4096,
    }
    args.update(kw)
    return SchedulerConfig(**args)  # type: ignore[arg-type]


#: Primary: 100 µs + 10 µs per row of bucket; fast: 20 µs + 2 µs; cheap rungs free.
PRIMARY_FAST = linear_cost([100 * US, 20 * US, 0, 0], [10 * US, 2 * US, 0, 0])


def scheduler(cfg: SchedulerConfig | None = None, prior: Callable[[int, int], int] | None = PRIMARY_FAST,
              ) -> Scheduler[int]:
    cfg = cfg or config()
    return Scheduler(cfg, CostModel(cfg.n_rungs, prior))


@dataclass
class Arrival:
    gap_ns: int
    cls: int
    budget_ns: int | None = None
    rows: int = 1
    batchable: bool = True
    client: int | None = None
    rung: int = 0
    cancel: int | None = None  # cancel the job submitted this many arrivals ago, if queued
    shed: int = 0  # call shed(shed) after this arrival


@dataclass
class Ledger:
    """How every job came back, and what the dispatcher saw."""

    jobs: list[Job[int]] = field(default_factory=list)
    returned: Counter[int] = field(default_factory=Counter)  # payload -> times returned
    door: Counter[Admit] = field(default_factory=Counter)
    dropped: Counter[tuple[Admit, Reason | None]] = field(default_factory=Counter)
    batches: list[Batch[int]] = field(default_factory=list)
    batched_jobs: int = 0
    late: list[Job[int]] = field(default_factory=list)  # answered after their deadline
    mispredicted: list[Batch[int]] = field(default_factory=list)  # formed to finish late
    # times a lower-class batch was handed out while a higher-class job waited
    lower_over_higher: list[int] = field(default_factory=list)
    cancelled: int = 0
    shed_calls: int = 0
    drained: int = 0
    bound_violations: list[str] = field(default_factory=list)


def simulate(sched: Scheduler[int], arrivals: list[Arrival], service: Callable[[int, int], int],
             clock: FakeClock | None = None, *, drain_after: int | None = None) -> Ledger:
    """Run ``arrivals`` through ``sched`` with a one-batch-at-a-time dispatcher whose batches
    take ``service(rung, rows)`` ns; drain after ``drain_after`` arrivals (None: run dry)."""
    clock = clock or FakeClock()
    led = Ledger()
    t = clock.now_ns()
    times: list[int] = []
    acc = t
    for a in arrivals:
        acc += a.gap_ns
        times.append(acc)
    cfg = sched.config
    i = 0
    running: tuple[int, int, Batch[int]] | None = None  # (finish, start, batch)

    def back(job: Job[int]) -> None:
        led.returned[job.payload] += 1

    def answered(job: Job[int], at: int) -> None:
        if at > job.deadline_ns:
            led.late.append(job)

    def take(now: int) -> None:
        for job, v in sched.take_dropped():
            back(job)
            led.dropped[(v.kind, v.reason)] += 1
            if v.kind is Admit.ANSWER_NOW:
                answered(job, now)

    for _ in range(200_000):
        if running is not None and running[0] <= t:
            finish, started, b = running
            for j in b.jobs:
                answered(j, finish)
            sched.observe(b.rung, b.rows, finish - started)
            running = None
        stop = drain_after is not None and i >= drain_after
        while not stop and i < len(arrivals) and times[i] <= t:
            a = arrivals[i]
            job = Job(len(led.jobs), a.cls, sched.deadline_for(a.cls, t, a.budget_ns), t, a.client,
                      a.rows, a.rung, a.batchable)
            led.jobs.append(job)
            v = sched.submit(job, t)
            led.door[v.kind] += 1
            if v.kind is not Admit.QUEUED:
                back(job)
                if v.kind is Admit.ANSWER_NOW:
                    answered(job, t)
            if a.cancel is not None and a.cancel < len(led.jobs):
                victim = led.jobs[-1 - a.cancel]
                if sched.cancel(victim):
                    back(victim)
                    led.cancelled += 1
            if a.shed:
                led.shed_calls += sched.shed(a.shed, t)
            take(t)
            i += 1
            stop = drain_after is not None and i >= drain_after
        if running is not None:
            take_all = sched.expire(t)
            for job, v in take_all:
                back(job)
                led.dropped[(v.kind, v.reason)] += 1
                if v.kind is Admit.ANSWER_NOW:
                    answered(job, t)
        else:
            nb = sched.next_batch(t)
            take(t)
            if nb is not None:
                _check_batch(sched, nb, t, led)
                for j in nb.jobs:
                    back(j)
                running = (t + max(1, service(nb.rung, nb.rows)), t, nb)
        if sched.total_queued > cfg.max_total_queued:
            led.bound_violations.append(f"total {sched.total_queued} at {t}")
        for c, p in enumerate(sched.classes):
            if sched.depth(c) > p.max_queue_size:
                led.bound_violations.append(f"class {c} depth {sched.depth(c)} at {t}")
        if stop:
            break
        cands = []
        if i < len(arrivals):
            cands.append(times[i])
        if running is not None:
            cands.append(running[0])
        w = sched.wake_at_ns()
        if w is not None:
            cands.append(w)
        if not cands:
            break
        nxt = min(cands)
        assert nxt > t, "the clock must move on"
        clock.advance(ns=nxt - t)
        t = nxt
    else:
        raise AssertionError("simulation did not finish")
    if running is not None:  # let the last batch finish
        finish, started, b = running
        for j in b.jobs:
            answered(j, finish)
        sched.observe(b.rung, b.rows, finish - started)
    take(t)
    rest = sched.drain()
    led.drained = len(rest)
    for j in rest:
        back(j)
    return led


def _check_batch(sched: Scheduler[int], b: Batch[int], t: int, led: Ledger) -> None:
    led.batches.append(b)
    led.batched_jobs += len(b.jobs)
    assert b.jobs, "empty batch"
    assert len({j.level_index for j in b.jobs}) == 1 and b.jobs[0].level_index == b.class_index
    assert all(j.rung == b.rung for j in b.jobs)
    assert not sched.config.cheap_rungs & {b.rung}, "cheap rungs are never batched"
    assert b.rows == sum(j.rows for j in b.jobs)
    assert len(b.jobs) <= sched.config.max_batch_size
    if len(b.jobs) > 1:
        assert all(j.rows == 1 and j.batchable for j in b.jobs), "solo jobs run alone"
    assert b.deadline_ns == min(j.deadline_ns for j in b.jobs)
    if b.start_ns + b.expected_ns > b.deadline_ns:
        led.mispredicted.append(b)
    if any(sched.depth(c) for c in range(b.class_index)):
        led.lower_over_higher.append(t)


def noisy(service: Callable[[int, int], int], seed: int, lo: float = 0.3, hi: float = 3.0,
          ) -> Callable[[int, int], int]:
    """``service`` times a random factor in [lo, hi] (deterministic from ``seed``)."""
    rnd = random.Random(seed)

    def cost(rung: int, n: int) -> int:
        return max(1, round(service(rung, n) * rnd.uniform(lo, hi)))

    return cost


__all__ = ["MS", "US", "Arrival", "Ledger", "Verdict", "config", "linear_cost", "noisy", "scheduler",
           "simulate", "three_classes"]
