"""Batches: strict priority with a starvation guard, FIFO growth bounded by the tightest
deadline and max_batch_size, solo jobs alone, and waiting for a batch to grow."""

from __future__ import annotations

import pytest
from schedsim import MS, US, config, scheduler

from tailguard.scheduler import Admit, Batch, Job, Scheduler
from tailguard.testing import FakeClock

CRIT, NORMAL, BULK = 0, 1, 2

# Primary (rung 0) batch times by size: 1 -> 110 µs, 2 -> 120, 3..4 -> 140, 5..8 -> 180.


def put(s: Scheduler[int], c: int, now: int, budget_ns: int | None = None, *, payload: int = 0,
        **kw: object) -> Job[int]:
    j: Job[int] = Job(payload, c, s.deadline_for(c, now, budget_ns), now, **kw)  # type: ignore[arg-type]
    v = s.submit(j, now)
    assert v.kind is Admit.QUEUED and v.reason is None, v
    return j


def batch(s: Scheduler[int], now: int) -> Batch[int]:
    b = s.next_batch(now)
    assert b is not None
    return b


@pytest.fixture
def now() -> int:
    return FakeClock().now_ns()


def test_nothing_queued_gives_no_batch(now: int) -> None:
    s = scheduler()
    assert s.next_batch(now) is None
    assert s.wake_at_ns() is None


def test_a_batch_takes_jobs_in_fifo_order_up_to_max_batch_size(now: int) -> None:
    s = scheduler()
    jobs = [put(s, BULK, now + i, payload=i) for i in range(11)]
    b = batch(s, now + 11)
    assert b.jobs == jobs[:8]
    assert (b.rung, b.rows, b.class_index, b.expected_ns) == (0, 8, BULK, 180 * US)
    assert b.deadline_ns == jobs[0].deadline_ns
    assert b.start_ns == now + 11
    s.observe(0, 8, 100 * US)
    assert batch(s, now + 11).jobs == jobs[8:]
    stats = s.statistics()
    assert stats["batches"] == 2
    assert stats["batch_sizes"] == {8: 1, 4: 1}
    assert stats["batched"]["bulk"] == 11


def test_growth_stops_where_the_tightest_deadline_would_be_missed(now: int) -> None:
    s = scheduler()
    jobs = [put(s, NORMAL, now, MS if i == 3 else None) for i in range(8)]
    later = now + MS - 150 * US  # job 3 has 150 µs left: a batch of 4 (140 µs) fits, 5 (180) not
    b = batch(s, later)
    assert b.jobs == jobs[:4]
    assert b.deadline_ns == jobs[3].deadline_ns
    assert b.start_ns + b.expected_ns <= b.deadline_ns


def test_strict_priority_serves_the_highest_class_first(now: int) -> None:
    s = scheduler()
    bulk = put(s, BULK, now)
    normal = put(s, NORMAL, now + 1)
    crit = put(s, CRIT, now + 2)
    assert [batch(s, now + 3).jobs for _ in range(3)] == [[crit], [normal], [bulk]]


def test_multi_row_and_unbatchable_jobs_run_alone_and_growth_does_not_skip_them(now: int) -> None:
    s = scheduler()
    a = put(s, BULK, now)
    wide = put(s, BULK, now + 1, rows=3)
    b = put(s, BULK, now + 2)
    single = put(s, BULK, now + 3, batchable=False)
    c = put(s, BULK, now + 4)
    got = [batch(s, now + 5) for _ in range(5)]
    assert [x.jobs for x in got] == [[a], [wide], [b], [single], [c]]
    assert got[1].rows == 3 and got[1].expected_ns == 140 * US


def test_a_batch_holds_one_rung_and_the_oldest_head_goes_first(now: int) -> None:
    s = scheduler()
    fast = Job(0, NORMAL, now + 5 * MS, now, rung=1)
    s.submit(fast, now)
    primary = [put(s, NORMAL, now + 1 + i) for i in range(3)]
    b1 = batch(s, now + 5)
    assert (b1.jobs, b1.rung) == ([fast], 1)
    b2 = batch(s, now + 5)
    assert (b2.jobs, b2.rung) == (primary, 0)


def test_a_small_batch_waits_up_to_max_queue_delay_to_grow(now: int) -> None:
    s = scheduler(config(max_queue_delay_ns=200 * US))
    first = [put(s, BULK, now) for _ in range(3)]
    assert s.next_batch(now) is None
    assert s.wake_at_ns() == now + 200 * US
    more = [put(s, BULK, now + 100 * US) for _ in range(2)]
    assert s.next_batch(now + 199 * US) is None
    assert batch(s, now + 200 * US).jobs == first + more


def test_a_full_batch_does_not_wait(now: int) -> None:
    s = scheduler(config(max_queue_delay_ns=200 * US))
    jobs = [put(s, BULK, now) for _ in range(8)]
    assert batch(s, now).jobs == jobs


def test_waiting_to_grow_never_runs_past_the_tightest_deadline(now: int) -> None:
    s = scheduler(config(max_queue_delay_ns=200 * US))
    put(s, CRIT, now, 300 * US)
    assert s.next_batch(now) is None
    # A batch of 2 (120 µs) must start by deadline - 120 µs = now + 180 µs.
    assert s.wake_at_ns() == now + 180 * US
    assert len(batch(s, now + 180 * US)) == 1


def test_the_starvation_guard_serves_a_starved_lower_class_once_per_interval(now: int) -> None:
    s = scheduler(config(starvation_guard_ns=MS))
    bulk = [put(s, BULK, now + i) for i in range(20)]
    t = now
    served = []
    for _ in range(12):
        t += 200 * US
        put(s, CRIT, t)  # a steady stream of critical work
        b = batch(s, t)
        served.append((t - now, b.class_index))
        s.observe(b.rung, b.rows, 100 * US)
    lower = [dt for dt, c in served if c == BULK]
    assert lower == [1200 * US, 2200 * US]  # waited over 1 ms; then one batch per 1 ms
    assert s.statistics()["starvation_guard"] == 2
    assert bulk[0].queued is False


def test_a_zero_starvation_guard_is_strict_priority(now: int) -> None:
    s = scheduler(config(starvation_guard_ns=0))
    put(s, BULK, now)
    for i in range(10):
        t = now + (i + 1) * MS
        put(s, CRIT, t)
        assert batch(s, t).class_index == CRIT


def test_the_guard_does_not_wait_for_a_batch_to_grow(now: int) -> None:
    s = scheduler(config(starvation_guard_ns=MS, max_queue_delay_ns=10 * MS))
    put(s, BULK, now)
    put(s, CRIT, now + 2 * MS)
    b = batch(s, now + 2 * MS)  # critical would wait to grow; bulk is starved: served now
    assert b.class_index == BULK


def test_observe_feeds_the_cost_model(now: int) -> None:
    s = scheduler()
    put(s, BULK, now)
    b = batch(s, now)
    s.observe(b.rung, b.rows, 40 * US)
    assert s.costs.expected_ns(0, 1) == 120 * US  # 40 + 4 * 20
    assert s.statistics()["in_flight"] == 0


def test_a_lower_class_batch_stays_within_its_share_of_the_tightest_higher_budget(now: int) -> None:
    s = scheduler(config(batch_share=0.15))  # critical budget 1 ms: lower batches <= 150 µs
    put(s, CRIT, now)  # critical traffic is active
    s.observe(0, 1, batch(s, now).expected_ns)
    for _ in range(8):
        put(s, BULK, now)
    b = batch(s, now)
    assert (b.rows, b.expected_ns) == (4, 140 * US)


def test_without_higher_class_traffic_a_lower_class_batch_grows_to_full_size(now: int) -> None:
    s = scheduler(config(batch_share=0.15))
    for _ in range(8):
        put(s, BULK, now)
    assert batch(s, now).rows == 8


def test_the_top_class_batch_is_not_capped_by_the_share(now: int) -> None:
    s = scheduler(config(batch_share=0.15))
    for _ in range(8):
        put(s, CRIT, now)
    assert batch(s, now).rows == 8
