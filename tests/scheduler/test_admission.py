"""Admission at the door: predicted finish vs deadline, degrade or reject per class policy,
queue bounds, global shedding, rate limits."""

from __future__ import annotations

import pytest
from schedsim import MS, PRIMARY_FAST, US, config, scheduler, three_classes

from tailguard.errors import UnknownPriority
from tailguard.scheduler import (
    Admit,
    ClassPolicy,
    CostModel,
    Job,
    OnTimeout,
    RateLimit,
    Reason,
    Scheduler,
    SchedulerConfig,
)
from tailguard.testing import FakeClock

CRIT, NORMAL, BULK = 0, 1, 2


def job(s: Scheduler[int], c: int, now: int, budget_ns: int | None = None, **kw: object) -> Job[int]:
    return Job(0, c, s.deadline_for(c, now, budget_ns), now, **kw)  # type: ignore[arg-type]


@pytest.fixture
def now() -> int:
    return FakeClock().now_ns()


def test_class_index_by_name_and_default() -> None:
    s = scheduler(config(default_class="normal"))
    assert [s.class_index(n) for n in ("critical", "normal", "bulk")] == [0, 1, 2]
    assert s.class_index(None) == 1
    assert scheduler().class_index(None) == 0  # first declared class


def test_an_unknown_class_name_is_an_unknown_priority() -> None:
    with pytest.raises(UnknownPriority):
        scheduler().class_index("vip")


def test_a_request_may_shorten_but_never_lengthen_its_budget() -> None:
    s = scheduler()
    assert s.deadline_for(CRIT, 10, None) == 10 + MS
    assert s.deadline_for(CRIT, 10, 300 * US) == 10 + 300 * US
    assert s.deadline_for(CRIT, 10, 10 * MS) == 10 + MS
    assert s.deadline_for(CRIT, 10, -5) == 10


def test_make_job_resolves_class_and_deadline(now: int) -> None:
    j = scheduler().make_job(42, now, "bulk", budget_ns=MS, client_id="c", rows=3)
    assert (j.payload, j.level_index, j.deadline_ns, j.rows, j.client_id) == (42, BULK, now + MS, 3, "c")


def test_a_request_that_fits_is_queued_at_its_rung(now: int) -> None:
    s = scheduler()
    v = s.submit(job(s, NORMAL, now), now)
    assert (v.kind, v.reason, v.rung, v.retry_after_ns) == (Admit.QUEUED, None, 0, 0)
    assert s.depth(NORMAL) == 1
    assert s.statistics()["admitted"]["normal"] == 1


def test_a_full_class_queue_rejects_with_a_retry_after(now: int) -> None:
    s = scheduler(config(classes=three_classes(max_queue_size=2), retry_after_floor_ns=7))
    for _ in range(2):
        assert s.submit(job(s, BULK, now), now).kind is Admit.QUEUED
    v = s.submit(job(s, BULK, now), now)
    assert (v.kind, v.reason) == (Admit.REJECTED, Reason.QUEUE_FULL)
    assert v.retry_after_ns >= 2 * 22_500  # two queued jobs' share of a batch
    assert s.statistics()["rejected"] == {"queue_full": {"bulk": 1}}


def test_the_retry_after_floor_applies(now: int) -> None:
    s = scheduler(config(classes=three_classes(max_queue_size=1), retry_after_floor_ns=5 * MS))
    s.submit(job(s, BULK, now), now)
    assert s.submit(job(s, BULK, now), now).retry_after_ns == 5 * MS


def test_rate_limited_clients_are_told_when_their_next_token_comes(now: int) -> None:
    s = scheduler(config(rate_limit=RateLimit(1000.0, 1)))
    assert s.submit(job(s, NORMAL, now, client_id="a"), now).kind is Admit.QUEUED
    v = s.submit(job(s, NORMAL, now + 250 * US, client_id="a"), now + 250 * US)
    assert (v.kind, v.reason, v.retry_after_ns) == (Admit.REJECTED, Reason.RATE_LIMITED, 750 * US)
    assert s.submit(job(s, NORMAL, now, client_id="b"), now).kind is Admit.QUEUED
    assert s.submit(job(s, NORMAL, now), now).kind is Admit.QUEUED  # no client id: not limited
    assert s.statistics()["rate_limit"]["limited"] == 1


def test_predicted_late_with_reject_policy_is_refused(now: int) -> None:
    s = scheduler(config(classes=three_classes(OnTimeout.REJECT)))
    v = s.submit(job(s, CRIT, now, 50 * US), now)  # primary needs 110 µs
    assert (v.kind, v.reason) == (Admit.REJECTED, Reason.PREDICTED_LATE)
    assert v.retry_after_ns >= s.config.retry_after_floor_ns
    assert s.total_queued == 0


def test_predicted_late_with_degrade_policy_queues_at_a_cheaper_model_rung(now: int) -> None:
    s = scheduler()
    v = s.submit(job(s, CRIT, now, 50 * US), now)  # fast needs 22 µs
    assert (v.kind, v.reason, v.rung) == (Admit.QUEUED, Reason.PREDICTED_LATE, 1)
    stats = s.statistics()
    assert stats["degraded"] == {"predicted_late": {"critical": 1}}
    assert stats["admitted"]["critical"] == 1


def test_predicted_late_everywhere_but_a_cheap_rung_answers_at_the_door(now: int) -> None:
    s = scheduler()
    v = s.submit(job(s, CRIT, now, 10 * US), now)
    assert (v.kind, v.reason, v.rung) == (Admit.ANSWER_NOW, Reason.PREDICTED_LATE, 2)
    assert s.total_queued == 0
    assert s.statistics()["answered_now"]["critical"] == 1


def test_predicted_late_with_nothing_that_fits_is_refused(now: int) -> None:
    s = scheduler(config(n_rungs=2, cheap_rungs=frozenset()))
    v = s.submit(job(s, CRIT, now, 10 * US), now)
    assert (v.kind, v.reason) == (Admit.REJECTED, Reason.PREDICTED_LATE)


def test_a_request_for_a_cheap_rung_is_answered_at_the_door(now: int) -> None:
    s = scheduler()
    v = s.submit(job(s, NORMAL, now, rung=3), now)
    assert (v.kind, v.reason, v.rung) == (Admit.ANSWER_NOW, None, 3)


def test_queued_work_of_the_same_class_delays_admission(now: int) -> None:
    s = scheduler()
    verdicts = [s.submit(job(s, CRIT, now), now) for _ in range(60)]
    first_late = next(i for i, v in enumerate(verdicts) if v.reason is Reason.PREDICTED_LATE)
    # Each queued primary job is ~22.5 µs of an 8-batch; 1 ms of budget holds ~36..45 of them.
    assert 36 <= first_late <= 45
    assert all(v.kind is Admit.QUEUED and v.reason is None for v in verdicts[:first_late])


def test_higher_classes_count_against_lower_ones_but_not_the_reverse(now: int) -> None:
    s = scheduler()
    for _ in range(200):
        s.submit(job(s, BULK, now), now)
    assert s.submit(job(s, CRIT, now), now).reason is None  # bulk work does not delay critical
    for _ in range(39):
        s.submit(job(s, CRIT, now), now)
    # 40 critical jobs (~900 µs) are ahead of a normal request with 900 µs of budget.
    v = s.submit(job(s, NORMAL, now, 900 * US), now)
    assert (v.kind, v.reason, v.rung) == (Admit.QUEUED, Reason.PREDICTED_LATE, 1)


def test_the_batch_in_flight_counts_until_it_is_observed(now: int) -> None:
    s = scheduler()
    for _ in range(8):
        s.submit(job(s, BULK, now), now)
    b = s.next_batch(now)
    assert b is not None and b.expected_ns == 180 * US
    v = s.submit(job(s, CRIT, now, 250 * US), now)  # 180 in flight + 110 > 250
    assert v.reason is Reason.PREDICTED_LATE
    s.observe(b.rung, b.rows, 150 * US)
    assert s.submit(job(s, CRIT, now, 250 * US), now).reason is None


def test_a_closed_scheduler_refuses_as_draining(now: int) -> None:
    s = scheduler()
    s.close()
    v = s.submit(job(s, CRIT, now), now)
    assert (v.kind, v.reason) == (Admit.REJECTED, Reason.DRAINING)
    assert s.closed


def test_at_the_global_bound_a_higher_arrival_sheds_the_newest_lowest_job(now: int) -> None:
    s = scheduler(config(max_total_queued=3))
    n1 = job(s, NORMAL, now)
    b1, b2 = job(s, BULK, now), job(s, BULK, now + 1)
    for j in (n1, b1, b2):
        s.submit(j, j.arrival_ns)
    order = []
    for _ in range(3):
        assert s.submit(job(s, CRIT, now + 2), now + 2).kind is Admit.QUEUED
        [(shed, v)] = s.take_dropped()
        assert (v.kind, v.reason) == (Admit.REJECTED, Reason.SHED_OVERLOAD)
        order.append(shed)
    assert order == [b2, b1, n1]
    v = s.submit(job(s, CRIT, now + 3), now + 3)  # nothing lower left to shed
    assert (v.kind, v.reason) == (Admit.REJECTED, Reason.SHED_OVERLOAD)
    assert s.take_dropped() == []
    stats = s.statistics()
    assert stats["shed"] == {"shed_overload": {"normal": 1, "bulk": 2}}
    assert stats["rejected"] == {"shed_overload": {"critical": 1}}


def test_an_arrival_of_the_lowest_queued_class_is_refused_at_the_bound(now: int) -> None:
    s = scheduler(config(max_total_queued=2))
    s.submit(job(s, NORMAL, now), now)
    s.submit(job(s, BULK, now), now)
    v = s.submit(job(s, NORMAL, now), now)
    assert v.kind is Admit.QUEUED
    assert s.submit(job(s, BULK, now), now).reason is Reason.SHED_OVERLOAD


def test_shed_on_demand_takes_the_lowest_class_first(now: int) -> None:
    s = scheduler()
    jobs = [job(s, c, now + i) for i, c in enumerate((CRIT, BULK, NORMAL, BULK))]
    for j in jobs:
        s.submit(j, j.arrival_ns)
    assert s.shed(3, now) == 3
    assert [j for j, _ in s.take_dropped()] == [jobs[3], jobs[1], jobs[2]]
    assert s.shed(5, now) == 1
    assert s.total_queued == 0


def test_a_single_class_single_rung_scheduler_works() -> None:
    cfg = SchedulerConfig(classes=(ClassPolicy("only", 1, MS),), n_rungs=1)
    s: Scheduler[int] = Scheduler(cfg, CostModel(1))
    assert s.submit(Job(0, 0, 10 + MS, 10), 10).kind is Admit.QUEUED
    b = s.next_batch(10)
    assert b is not None and len(b) == 1


def test_a_cost_model_for_another_ladder_is_refused() -> None:
    with pytest.raises(ValueError):
        Scheduler(config(), CostModel(2))


def test_a_queued_job_cannot_be_submitted_again(now: int) -> None:
    s = scheduler()
    j = job(s, BULK, now)
    s.submit(j, now)
    with pytest.raises(ValueError):
        s.submit(j, now)


def test_a_job_has_at_least_one_row() -> None:
    with pytest.raises(ValueError):
        Job(0, 0, 1, 0, rows=0)


# -- load above a class stretches its predicted wait ----------------------------------------------
def saturate_with_critical(s: Scheduler[int], now: int, span_ns: int, gap_ns: int) -> int:
    """Critical arrivals every ``gap_ns`` for ``span_ns``, each batch run at once (the queue
    stays short): the critical class alone keeps the server about busy.  Returns the time."""
    t = now
    while t < now + span_ns:
        assert s.submit(job(s, CRIT, t), t).kind is Admit.QUEUED
        b = s.next_batch(t)
        assert b is not None
        s.observe(b.rung, b.rows, PRIMARY_FAST(b.rung, b.rows))  # the true cost
        t += gap_ns
    return t


def queue_three_critical(s: Scheduler[int], t: int) -> None:
    for _ in range(3):
        s.submit(job(s, CRIT, t), t)


def test_an_idle_server_admits_a_lower_class_request_behind_a_short_queue(now: int) -> None:
    s = scheduler()
    queue_three_critical(s, now)
    assert s.submit(job(s, BULK, now, 1 * MS), now).kind is Admit.QUEUED


def test_a_lower_class_is_turned_away_at_the_door_while_higher_ones_use_the_capacity(now: int) -> None:
    s = scheduler()
    # A critical row's share of a full batch is 22.5 µs: one every 20 µs is more than the server.
    t = saturate_with_critical(s, now, 20 * MS, 20 * US)
    queue_three_critical(s, t)
    v = s.submit(job(s, BULK, t, 1 * MS), t)
    assert (v.kind, v.reason) == (Admit.ANSWER_NOW, Reason.PREDICTED_LATE)


def test_the_top_class_is_not_stretched_by_its_own_load(now: int) -> None:
    s = scheduler()
    t = saturate_with_critical(s, now, 20 * MS, 20 * US)
    assert s.submit(job(s, CRIT, t), t).kind is Admit.QUEUED


def test_the_stretch_fades_once_the_load_is_gone(now: int) -> None:
    s = scheduler()
    t = saturate_with_critical(s, now, 20 * MS, 20 * US) + 100 * MS  # then quiet for 100 ms
    s.submit(job(s, NORMAL, t, 10 * MS), t)  # the first arrival after the pause closes the window
    queue_three_critical(s, t)
    assert s.submit(job(s, BULK, t, 1 * MS), t).kind is Admit.QUEUED


def test_ingress_cost_counts_as_load_above_every_class(now: int) -> None:
    s = scheduler()
    t = now
    for _ in range(1000):
        s.submit(job(s, BULK, t, 50 * MS, rung=3), t)  # cheap rung: answered at the door, no work
        s.note_ingress(1, 30 * US)  # reading it cost more than the gap between arrivals
        t += 20 * US
    queue_three_critical(s, t)
    v = s.submit(job(s, CRIT, t, 1 * MS), t)
    assert (v.kind, v.reason) == (Admit.ANSWER_NOW, Reason.PREDICTED_LATE)
