"""``GatedCall``: the helper thread runs only inside the windows the owner opens."""

from __future__ import annotations

import sys
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
    # As ``prepare_swap`` runs it (``swap.short_gil_slices``): with the default 5 ms GIL switch
    # interval a window on a busy machine lasts until the owner gets the GIL back, and the
    # whole work could fit in the three windows this test wants to see exceeded.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(20e-6)
    try:
        run_in_windows(g, progress, started)
    finally:
        sys.setswitchinterval(interval)
    assert g.result() == sum(range(5000)) and g.windows > 3
    assert g.next_cost_ns() == 20_000 + g.slack_ns


def run_in_windows(g: GatedCall, progress: list[int], started: threading.Event) -> None:
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
