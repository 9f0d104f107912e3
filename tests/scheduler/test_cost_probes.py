"""Cost probes: a rung whose learned cost keeps every request out (predicted late) gets one
request admitted per probe interval to re-measure it; a fast answer re-seeds the cost, so a
slowness that has passed (a store that stalled, a model that hiccuped) stops refusing and
degrading requests, instead of never being measured again."""

from __future__ import annotations

from schedsim import MS, US, scheduler

from tailguard.scheduler import Admit, Job, Reason, Scheduler
from tailguard.scheduler.scheduler import PROBE_INTERVAL_NS

NORMAL = 1  # 5 ms budget


def submit(s: Scheduler[int], now: int) -> tuple[Admit, int]:
    v = s.submit(Job(0, NORMAL, s.deadline_for(NORMAL, now), now), now)
    return v.kind, v.rung


def run_queued(s: Scheduler[int], now: int, elapsed_ns: int) -> int:
    """Run every queued batch at ``now``, each taking ``elapsed_ns``; the rungs they ran at."""
    rungs = []
    while (b := s.next_batch(now)) is not None:
        rungs.append(b.rung)
        s.observe(b.rung, b.rows, elapsed_ns)
    return len(rungs)


def test_a_stalled_rung_is_probed_once_per_interval_and_recovers() -> None:
    s = scheduler()
    now = 1_000 * MS
    for _ in range(8):  # a stalled dependency: the primary's batches took 40 ms
        s.observe(0, 1, 40 * MS)
    assert submit(s, now) == (Admit.QUEUED, 1)  # predicted late at the primary: degraded to fast
    run_queued(s, now, 50 * US)
    # Within the interval: still degraded, no probe.
    now += PROBE_INTERVAL_NS // 2
    assert submit(s, now) == (Admit.QUEUED, 1)
    run_queued(s, now, 50 * US)
    assert s.counters.probes == 0
    # The primary has not run for a whole interval: one request goes there to re-measure...
    now += PROBE_INTERVAL_NS
    assert submit(s, now) == (Admit.QUEUED, 0)
    assert s.counters.probes == 1
    assert submit(s, now)[1] != 0 and s.counters.probes == 1  # ... one only
    # ... and it came back fast (the dependency recovered): the cost is re-seeded at once.
    b = s.next_batch(now)
    assert b is not None and b.rung == 0
    s.observe(0, b.rows, 150 * US)
    run_queued(s, now, 50 * US)
    assert s.costs.expected_ns(0, 1) < 1 * MS
    assert submit(s, now + 1) == (Admit.QUEUED, 0)


def test_a_probe_that_is_still_slow_keeps_the_cost_and_waits_another_interval() -> None:
    s = scheduler()
    now = 1_000 * MS
    for _ in range(8):
        s.observe(0, 1, 40 * MS)
    submit(s, now)
    run_queued(s, now, 50 * US)
    now += PROBE_INTERVAL_NS + 1
    assert submit(s, now) == (Admit.QUEUED, 0)  # the probe
    b = s.next_batch(now)
    assert b is not None and b.rung == 0
    s.observe(0, b.rows, 40 * MS)  # still stalled
    assert s.costs.expected_ns(0, 1) > 5 * MS
    assert submit(s, now + 1) == (Admit.QUEUED, 1)
    assert s.counters.probes == 1


def test_no_probe_while_the_rung_still_runs() -> None:
    s = scheduler()
    now = 1_000 * MS
    for _ in range(8):
        s.observe(0, 1, 6 * MS)  # over the normal budget, under bulk's 50 ms
    for _ in range(5):
        assert submit(s, now)[1] != 0
        v = s.submit(Job(0, 2, s.deadline_for(2, now), now), now)  # bulk still runs the primary
        assert (v.kind, v.rung) == (Admit.QUEUED, 0)
        run_queued(s, now, 6 * MS)
        now += PROBE_INTERVAL_NS
    assert s.counters.probes == 0
    assert s.statistics()["cost_probes"] == 0
    assert Reason.PREDICTED_LATE.value in s.statistics()["degraded"]
