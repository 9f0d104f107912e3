"""``GatedCall``: the helper thread runs only inside the windows the owner opens."""

from __future__ import annotations

import threading

import pytest

from tailguard.registry.gated import GatedCall


def test_the_helper_waits_for_windows_and_finishes_through_steps() -> None:
    progress: list[int] = []
    started = threading.Event()

    def work() -> int:
        started.set()
        for i in range(5000):
            progress.append(sum(range(300)) * 0 + i)  # calls per item: the gate is checked between them
        return sum(progress)

    g = GatedCall(work, window_ns=20_000)
    assert not started.wait(0.05)  # nothing runs before the first window
    assert not g.done() and progress == []
    g.step()
    while not g.done():
        seen = len(progress)
        # Between windows the helper stands still at its next call: give it time to move on
        # if the gate leaked (an observation window, not a race being waited out).
        threading.Event().wait(0.01)
        if not g.done():
            assert len(progress) <= seen + 1, (seen, len(progress))
        g.step()
    assert g.result() == sum(range(5000)) and g.windows > 3
    assert g.next_cost_ns() == 20_000 + g.slack_ns


def test_an_exception_is_raised_on_the_owner_thread() -> None:
    def refuse() -> None:
        raise ValueError("corrupt artifact")

    g = GatedCall(refuse)
    with pytest.raises(RuntimeError, match="not finished"):
        g.result()
    while not g.done():
        g.step()
    with pytest.raises(ValueError, match="corrupt artifact"):
        g.result()


def test_run_all_and_abandon_let_the_helper_finish() -> None:
    assert GatedCall(lambda: 7).run_all() == 7
    done = threading.Event()
    g = GatedCall(done.set)
    g.abandon()
    assert done.wait(10)
