"""The circuit breaker on a fake clock: the opening rules (consecutive failures, failure and
slow rates over a rolling window), the open period and its backoff, half-open trials, counters."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tailguard.resilience.breaker import BreakerConfig, BreakerState, CircuitBreaker
from tailguard.testing import FakeClock

MS = 1_000_000
CLOSED, HALF_OPEN, OPEN = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN


def make(clock: FakeClock, **kw: float) -> CircuitBreaker:
    cfg = {"failures": 3, "window": 10, "slow_s": 0.010, "open_s": 1.0, "max_open_s": 8.0, **kw}
    return CircuitBreaker(BreakerConfig(**cfg), clock)  # type: ignore[arg-type]


def call(br: CircuitBreaker, clock: FakeClock, *, ok: bool = True, took_s: float = 0.0) -> bool:
    """One guarded call that takes ``took_s`` of fake time; False when short-circuited."""
    if not br.allow():
        return False
    start = br.now()
    clock.advance(took_s)
    if ok:
        br.success(start)
    else:
        br.failure(start)
    return True


def trip(br: CircuitBreaker, clock: FakeClock) -> None:
    while br.state is CLOSED:
        call(br, clock, ok=False)


# -- closed: the rules that open it ----------------------------------------------------------------
def test_consecutive_failures_open_it() -> None:
    clock = FakeClock()
    br = make(clock)
    call(br, clock, ok=False)
    call(br, clock, ok=False)
    assert br.state is CLOSED
    call(br, clock, ok=False)
    assert (br.state, br.opened_by, br.opens) == (OPEN, "failures", 1)


def test_a_success_breaks_the_streak() -> None:
    clock = FakeClock()
    br = make(clock, window=0)
    for _ in range(10):
        call(br, clock, ok=False)
        call(br, clock, ok=False)
        call(br, clock)
    assert br.state is CLOSED and br.failures == 20


def test_failure_rate_over_a_full_window_opens_it() -> None:
    clock = FakeClock()
    br = make(clock, failures=0, window=10)
    for i in range(9):  # 4 failures out of 9: the window is not full yet
        call(br, clock, ok=i % 2 == 0)
    assert br.state is CLOSED
    call(br, clock, ok=False)  # 5 of 10 failed: 50 %
    assert (br.state, br.opened_by) == (OPEN, "failure_rate")


def test_old_outcomes_leave_the_rolling_window() -> None:
    clock = FakeClock()
    br = make(clock, failures=0, window=10)
    for _ in range(4):
        call(br, clock, ok=False)
    for _ in range(20):  # the four failures roll out of the window
        call(br, clock)
    assert br.statistics()["window_failed"] == 0
    for _ in range(4):
        call(br, clock, ok=False)
    assert br.state is CLOSED  # 4 of the last 10, not 8
    call(br, clock, ok=False)
    assert (br.state, br.opened_by) == (OPEN, "failure_rate")


def test_slow_successes_open_it_by_the_slow_rule() -> None:
    clock = FakeClock()
    br = make(clock, failures=0, window=4)
    call(br, clock, took_s=0.010)  # at the threshold: not slow
    call(br, clock, took_s=0.001)
    call(br, clock, took_s=0.011)
    assert (br.state, br.slow) == (CLOSED, 1)
    call(br, clock, took_s=0.050)  # 2 of 4 slow
    assert (br.state, br.opened_by, br.failures) == (OPEN, "slow_rate", 0)


def test_slow_failures_count_as_both_and_the_slow_rule_is_reported() -> None:
    clock = FakeClock()
    br = make(clock, failures=0, window=4)
    for _ in range(4):
        call(br, clock, ok=False, took_s=0.050)  # what a timeout looks like
    assert (br.state, br.opened_by, br.failures, br.slow) == (OPEN, "slow_rate", 4, 4)


def test_with_both_rules_off_it_never_opens() -> None:
    clock = FakeClock()
    br = make(clock, failures=0, window=0)
    for _ in range(100):
        call(br, clock, ok=False, took_s=1.0)
    assert (br.state, br.opens, br.failures) == (CLOSED, 0, 100)


@given(st.lists(st.tuples(st.booleans(), st.booleans()), max_size=60), st.integers(2, 12))
def test_the_window_opens_exactly_where_a_recount_says(outcomes: list[tuple[bool, bool]], n: int) -> None:
    clock = FakeClock()
    br = make(clock, failures=0, window=n, failure_rate=0.5, slow_rate=0.75)
    for i, (ok, slow) in enumerate(outcomes):
        call(br, clock, ok=ok, took_s=0.020 if slow else 0.0)
        last = outcomes[max(0, i + 1 - n): i + 1]
        failed, slowed = sum(not o for o, _ in last), sum(s for _, s in last)
        full = i + 1 >= n
        if full and slowed >= 0.75 * n:
            assert (br.state, br.opened_by) == (OPEN, "slow_rate")
            return
        if full and failed >= 0.5 * n:
            assert (br.state, br.opened_by) == (OPEN, "failure_rate")
            return
        stats = br.statistics()
        assert (br.state, stats["window_failed"], stats["window_slow"]) == (CLOSED, failed, slowed)


# -- open: short circuits, the period, its backoff -------------------------------------------------
def test_open_short_circuits_until_the_period_has_passed() -> None:
    clock = FakeClock()
    br = make(clock)
    trip(br, clock)
    for _ in range(5):
        assert not br.allow()
    clock.advance(0.999)
    assert not br.allow()
    assert br.short_circuited == 6 and br.state is OPEN  # no timer: it moves at the next call
    clock.advance(0.001)
    assert br.allow()
    assert br.state is HALF_OPEN


def test_failed_trials_double_the_open_period_up_to_the_cap() -> None:
    clock = FakeClock()
    br = make(clock)
    trip(br, clock)
    periods = []
    for _ in range(6):
        opened = clock.now_ns()
        periods.append((br.retry_at_ns - opened) / 1e9)
        clock.advance(periods[-1])
        assert call(br, clock, ok=False)  # the trial fails
        assert br.state is OPEN
    assert periods == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert br.opened_by == "trial_failed" and br.opens == 7


def test_a_slow_trial_reopens_it() -> None:
    clock = FakeClock()
    br = make(clock)
    trip(br, clock)
    clock.advance(1.0)
    assert call(br, clock, took_s=0.020)
    assert (br.state, br.opened_by) == (OPEN, "trial_slow")
    assert br.retry_at_ns - clock.now_ns() == 2000 * MS


# -- half-open: trials -------------------------------------------------------------------------------
def test_half_open_lets_one_trial_through_at_a_time() -> None:
    clock = FakeClock()
    br = make(clock)
    trip(br, clock)
    clock.advance(1.0)
    assert br.allow()  # the trial is out
    assert not br.allow()
    assert br.short_circuited == 1
    br.success(br.now())
    assert br.state is CLOSED


def test_a_successful_trial_closes_it_and_resets_window_and_backoff() -> None:
    clock = FakeClock()
    br = make(clock)
    trip(br, clock)
    clock.advance(1.0)
    call(br, clock, ok=False)  # backoff: next period 2 s
    clock.advance(2.0)
    assert call(br, clock)
    assert br.state is CLOSED
    stats = br.statistics()
    assert (stats["window_calls"], stats["open_period_s"]) == (0, 1.0)
    call(br, clock, ok=False)
    call(br, clock, ok=False)
    assert br.state is CLOSED  # the streak starts over
    call(br, clock, ok=False)
    assert br.retry_at_ns - clock.now_ns() == 1000 * MS


def test_several_trials_must_all_pass() -> None:
    clock = FakeClock()
    br = make(clock, half_open_calls=3)
    trip(br, clock)
    clock.advance(1.0)
    assert call(br, clock) and call(br, clock)
    assert br.state is HALF_OPEN
    assert call(br, clock)
    assert br.state is CLOSED


def test_a_released_trial_permit_lets_the_next_call_try() -> None:
    clock = FakeClock()
    br = make(clock)
    trip(br, clock)
    clock.advance(1.0)
    assert br.allow()
    br.release()  # the call never reached the dependency
    assert br.state is HALF_OPEN and br.calls == 3
    assert call(br, clock)
    assert br.state is CLOSED


# -- counters and history ----------------------------------------------------------------------------
def test_transitions_are_recorded_with_times_and_reasons() -> None:
    clock = FakeClock()
    br = make(clock)
    trip(br, clock)
    t_open = clock.now_ns()
    clock.advance(1.5)
    call(br, clock)
    t_trial = clock.now_ns()
    stats = br.statistics()
    assert stats["transitions"] == [
        (t_open, "closed", "open", "failures"),
        (t_trial, "open", "half_open", "open_elapsed"),
        (t_trial, "half_open", "closed", "trials_passed"),
    ]
    assert (stats["state"], stats["state_changes"], stats["opens"], stats["calls"]) == ("closed", 3, 1, 4)


def test_reset_closes_and_reset_statistics_keeps_the_state() -> None:
    clock = FakeClock()
    br = make(clock)
    trip(br, clock)
    br.allow()
    br.reset_statistics()
    assert (br.state, br.short_circuited, br.opens, br.transitions) == (OPEN, 0, 0, type(br.transitions)())
    br.reset()
    assert br.state is CLOSED and br.allow()
    assert br.transitions[-1].reason == "reset"


def test_the_state_values_are_the_gauge_values() -> None:
    assert [int(s) for s in (CLOSED, HALF_OPEN, OPEN)] == [0, 1, 2]


@pytest.mark.parametrize("kw", [
    {"failures": -1}, {"window": -1}, {"failure_rate": 0.0}, {"slow_rate": 1.5}, {"slow_s": 0.0},
    {"open_s": 0.0}, {"open_s": 2.0, "max_open_s": 1.0}, {"half_open_calls": 0},
])
def test_bad_configs_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BreakerConfig(**kw)  # type: ignore[arg-type]


def test_answered_records_only_what_changes_something() -> None:
    clock = FakeClock()
    br = make(clock, failures=3, window=0)
    br.answered()
    assert br.calls == 0  # closed, nothing pending: not even recorded
    br.failure(br.now())
    br.failure(br.now())
    br.answered()  # ends the run of failures
    assert (br.calls, br.streak) == (3, 0)
    for _ in range(3):
        br.failure(br.now())
    assert br.state is BreakerState.OPEN
    clock.advance(1.0)
    assert br.allow()  # the trial
    br.answered()
    assert br.state is BreakerState.CLOSED
