"""The owner inbox: budgets, overdue steps, withdrawal and exceptions handed back."""

from __future__ import annotations

import threading

import pytest

from tailguard.registry.owner import OwnerInbox
from tailguard.registry.problems import ModelSwapError
from tailguard.testing import FakeClock

WAIT_S = 30.0


class FakeSteps:
    """``n`` steps of ``cost_ns`` each, advancing a fake clock by that much when run."""

    def __init__(self, clock: FakeClock, n: int, cost_ns: int) -> None:
        self.clock, self.left, self.cost_ns, self.ran = clock, n, cost_ns, 0

    def done(self) -> bool:
        return self.left == 0

    def next_cost_ns(self) -> int:
        return self.cost_ns

    def step(self) -> None:
        self.clock.advance(ns=self.cost_ns)
        self.left -= 1
        self.ran += 1


def test_steps_run_while_they_fit_the_budget_then_the_final() -> None:
    clock = FakeClock()
    inbox = OwnerInbox(clock.now_ns)
    steps = FakeSteps(clock, 5, 100)
    fut = inbox.submit(lambda: "switched", steps)
    assert inbox.run_pending(250) == 2  # a third step would end past the budget
    assert not fut.done()
    assert inbox.run_pending(1000) == 4  # the remaining steps and, with budget left, the final
    assert (steps.ran, fut.result()) == (5, "switched")


def test_the_final_waits_for_a_call_of_its_own_once_the_budget_is_spent() -> None:
    clock = FakeClock()
    inbox = OwnerInbox(clock.now_ns)
    fut = inbox.submit(lambda: "switched", FakeSteps(clock, 2, 100))
    assert inbox.run_pending(200) == 2
    assert not fut.done()
    assert inbox.run_pending(200) == 1
    assert fut.result() == "switched"


def test_a_step_longer_than_every_gap_runs_once_overdue() -> None:
    clock = FakeClock()
    inbox = OwnerInbox(clock.now_ns, overdue_ns=10_000)
    steps = FakeSteps(clock, 2, 5_000)
    inbox.submit(lambda: None, steps)
    assert inbox.run_pending(1_000) == 0
    clock.advance(ns=9_000)
    assert inbox.run_pending(1_000) == 0
    clock.advance(ns=1_000)
    assert inbox.run_pending(1_000) == 1  # overdue: one step, then the clock starts again
    assert inbox.run_pending(1_000) == 0
    assert steps.ran == 1


def test_no_budget_runs_everything() -> None:
    clock = FakeClock()
    inbox = OwnerInbox(clock.now_ns)
    steps = FakeSteps(clock, 4, 1_000_000)
    fut = inbox.submit(lambda: 7, steps)
    assert inbox.run_pending() == 5
    assert fut.result() == 7


def test_empty_inbox_does_nothing() -> None:
    assert OwnerInbox().run_pending(1_000) == 0


def test_inbox_hands_the_owner_exception_to_the_caller() -> None:
    inbox = OwnerInbox()
    result: list[BaseException] = []

    def caller() -> None:
        try:
            inbox.call(lambda: 1 / 0, timeout_s=WAIT_S)
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=caller)
    t.start()
    while t.is_alive():
        inbox.run_pending()
        t.join(0.001)
    assert isinstance(result[0], ZeroDivisionError)


def test_a_timed_out_call_is_withdrawn_and_never_applied() -> None:
    inbox = OwnerInbox()
    ran: list[int] = []
    with pytest.raises(ModelSwapError, match="nothing was changed"):
        inbox.call(lambda: ran.append(1), timeout_s=0.01)
    assert (inbox.run_pending(), ran) == (0, [])


def test_closed_inbox_runs_nothing_and_fails_its_waiters() -> None:
    inbox = OwnerInbox()
    ran: list[int] = []
    fut = inbox.submit(lambda: ran.append(1))
    inbox.close()
    assert (inbox.run_pending(), ran) == (0, [])
    assert isinstance(fut.exception(), ModelSwapError)
