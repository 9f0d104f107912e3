"""Jobs that can no longer make their deadline: degraded or expired per class policy, never
dropped silently; cancel and drain hand jobs back too."""

from __future__ import annotations

import pytest
from schedsim import MS, US, config, scheduler, three_classes

from tailguard.scheduler import Admit, Job, OnTimeout, Reason, Scheduler
from tailguard.testing import FakeClock

CRIT, NORMAL, BULK = 0, 1, 2

# Single-job times: primary (rung 0) 110 µs, fast (rung 1) 22 µs; rungs 2 and 3 are cheap.


def put(s: Scheduler[int], c: int, now: int, budget_ns: int | None = None, payload: int = 0) -> Job[int]:
    j: Job[int] = Job(payload, c, s.deadline_for(c, now, budget_ns), now)
    assert s.submit(j, now).kind is Admit.QUEUED
    return j


@pytest.fixture
def now() -> int:
    return FakeClock().now_ns()


def test_a_head_too_late_for_its_rung_moves_to_a_cheaper_model_rung(now: int) -> None:
    s = scheduler()
    j = put(s, NORMAL, now)
    t = j.deadline_ns - 50 * US  # primary needs 110 µs, fast 22 µs
    b = s.next_batch(t)
    assert b is not None and b.jobs == [j] and b.rung == 1
    assert s.take_dropped() == []
    assert s.statistics()["degraded"] == {"expired": {"normal": 1}}


def test_a_head_too_late_for_every_model_rung_is_answered_at_a_cheap_rung(now: int) -> None:
    s = scheduler()
    j = put(s, NORMAL, now)
    assert s.next_batch(j.deadline_ns - 10 * US) is None
    [(back, v)] = s.take_dropped()
    assert back is j
    assert (v.kind, v.reason, v.rung) == (Admit.ANSWER_NOW, Reason.EXPIRED, 2)
    assert s.statistics()["expired"]["normal"] == 1


def test_with_a_reject_policy_a_late_head_is_rejected_as_expired(now: int) -> None:
    s = scheduler(config(classes=three_classes(OnTimeout.REJECT)))
    j = put(s, NORMAL, now)
    assert s.next_batch(j.deadline_ns - 50 * US) is None
    [(back, v)] = s.take_dropped()
    assert (back, v.kind, v.reason) == (j, Admit.REJECTED, Reason.EXPIRED)
    assert v.retry_after_ns >= s.config.retry_after_floor_ns
    assert s.statistics()["rejected"] == {"expired": {"normal": 1}}


def test_a_job_past_its_deadline_is_rejected_even_when_degradable(now: int) -> None:
    s = scheduler()
    j = put(s, NORMAL, now)
    [(back, v)] = s.expire(j.deadline_ns + 1)
    assert (back, v.kind, v.reason) == (j, Admit.REJECTED, Reason.EXPIRED)


def test_expire_finds_a_late_job_deep_in_the_queue(now: int) -> None:
    s = scheduler()
    jobs = [put(s, BULK, now, payload=i) for i in range(20)]
    urgent = put(s, BULK, now, budget_ns=MS, payload=99)
    # The cheapest model rung needs 22 µs: from deadline - 22 µs on it cannot make it.
    assert s.wake_at_ns() == urgent.deadline_ns - 22 * US + 1
    assert s.expire(urgent.deadline_ns - 22 * US) == []
    [(back, v)] = s.expire(urgent.deadline_ns - 21 * US)
    assert back is urgent and (v.kind, v.reason, v.rung) == (Admit.ANSWER_NOW, Reason.EXPIRED, 2)
    assert s.total_queued == 20
    got = []
    while (b := s.next_batch(urgent.deadline_ns)) is not None:
        got += b.jobs
    assert got == jobs


def test_next_batch_expires_on_the_way_and_hands_jobs_back(now: int) -> None:
    s = scheduler()
    late = put(s, CRIT, now, budget_ns=100 * US)  # admitted at the fast rung
    ok = put(s, BULK, now)
    b = s.next_batch(late.deadline_ns - 5 * US)
    assert b is not None and b.jobs == [ok]
    assert [j for j, _ in s.take_dropped()] == [late]


def test_a_cancelled_job_leaves_the_queue_once(now: int) -> None:
    s = scheduler()
    a, b, c = (put(s, BULK, now + i) for i in range(3))
    assert s.cancel(b)
    assert not s.cancel(b)
    assert s.total_queued == 2
    batch = s.next_batch(now + 3)
    assert batch is not None and batch.jobs == [a, c]
    assert not s.cancel(a)
    assert s.statistics()["cancelled"]["bulk"] == 1


def test_drain_returns_every_queued_job_and_closes(now: int) -> None:
    s = scheduler()
    jobs = [put(s, c, now + i) for i, c in enumerate((BULK, CRIT, NORMAL, CRIT))]
    s.cancel(jobs[2])
    out = s.drain()
    assert out == [jobs[1], jobs[3], jobs[0]]
    assert s.total_queued == 0 and s.closed
    assert s.next_batch(now + 10) is None
    assert s.submit(Job(0, CRIT, now + MS, now), now).reason is Reason.DRAINING
    assert s.statistics()["drained"] == {"critical": 2, "normal": 0, "bulk": 1}


def test_take_dropped_empties_the_outbox(now: int) -> None:
    s = scheduler()
    put(s, BULK, now)
    s.shed(1, now)
    assert s.has_dropped
    assert len(s.take_dropped()) == 1
    assert not s.has_dropped and s.take_dropped() == []


def test_statistics_shape(now: int) -> None:
    s = scheduler()
    put(s, BULK, now)
    stats = s.statistics()
    assert stats["queued"] == {"critical": 0, "normal": 0, "bulk": 1}
    assert stats["queued_total"] == 1
    assert stats["queued_work_ns"]["bulk"] == 22_500
    assert stats["submitted"]["bulk"] == 1
    assert stats["rejected"] == stats["degraded"] == stats["shed"] == {}
