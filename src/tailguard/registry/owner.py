"""Work handed to an engine's owner thread and done there in idle time, between decisions.

An engine is owned by one thread; changing what it serves (a hot swap) must happen on that
thread, between two decisions, and work that competes with it for the GIL from another
thread (model warm-up inferences) would delay its decisions: CPython hands the GIL over
only at a forced switch (every 5 ms) and a waiting owner pays for it.  ``resilience.probe``
measured the same and runs probes in the owner's idle time; the inbox does likewise.

A **task** is an optional ``Steps`` object — small units of work, each announcing its
expected cost — followed by a ``final`` call whose result the submitting thread receives.
The owner calls ``run_pending(budget_ns)`` in idle time (or attaches the inbox to a service:
it is a ``SideTask``, drained by ``Service.run_side_path``): a step runs only when its expected
cost fits what is left of the budget — or when the task has made no progress for
``overdue_ns`` (20 ms), so a step longer than every idle gap still runs, once per that
interval, delaying at most one decision each time — then ``final`` runs alone in one call.
``run_pending()`` with no budget runs everything queued.  With nothing queued it costs one
deque truth test.

Withdrawal: a submitter that stops waiting (``call``'s timeout) withdraws its task; the
owner never starts ``final`` after that.  If ``final`` had already started, the submitter
waits for its result instead (it is short), so "withdrawn" always means "never applied".

Owner: ``run_pending``/``drain`` on the engine's owner thread only; ``call``/``submit`` from
any thread.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from tailguard.registry.problems import ModelSwapError

__all__ = ["OwnerInbox", "Steps"]

T = TypeVar("T")


class Steps(Protocol):
    """Work done in small steps on the owner thread (e.g. one warm-up inference per step)."""

    def done(self) -> bool:
        """Whether every step has run."""
        ...

    def next_cost_ns(self) -> int:
        """Expected real time of the next step in ns (0: unknown, run it anyway)."""
        ...

    def step(self) -> None:
        """Run the next step (may raise: the task then fails with that exception)."""
        ...


class _Task(Generic[T]):
    __slots__ = ("committed", "final", "future", "lock", "progress_ns", "steps", "withdrawn")

    def __init__(self, steps: Steps | None, final: Callable[[], T]) -> None:
        self.future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self.steps = steps
        self.final = final
        self.lock = threading.Lock()
        self.committed = False
        self.withdrawn = False
        self.progress_ns = 0  # when a step last ran (0: never)


class OwnerInbox:
    """Tasks handed to an engine's owner thread; see the module docstring."""

    def __init__(self, now_ns: Callable[[], int] = time.perf_counter_ns, *,
                 overdue_ns: int = 20_000_000) -> None:
        # Budgets are real time (like Service.run_side_path), whatever clock the engine uses.
        self._now = now_ns
        self.overdue_ns = overdue_ns
        self._tasks: collections.deque[_Task[Any]] = collections.deque()

    def submit(self, final: Callable[[], T], steps: Steps | None = None) -> concurrent.futures.Future[T]:
        """Queue a task (``steps`` first, then ``final``); its future holds ``final``'s result
        or the first exception."""
        task = _Task(steps, final)
        self._tasks.append(task)
        return task.future

    def call(self, final: Callable[[], T], timeout_s: float, steps: Steps | None = None) -> T:
        """Queue a task and wait for its result.  If the owner has not started ``final``
        within ``timeout_s`` the task is withdrawn — it will never be applied — and
        ``ModelSwapError`` is raised."""
        task = _Task(steps, final)
        self._tasks.append(task)
        try:
            return task.future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            with task.lock:
                if not task.committed:
                    task.withdrawn = True
                    raise ModelSwapError(
                        f"the engine's owner thread did not complete the switch within {timeout_s:g} s "
                        "(is it calling run_pending() or run_side_path() in idle time?); nothing was "
                        "changed") from None
        # ``final`` started just as the wait ran out: it is short, wait for it.
        return task.future.result()

    def run_pending(self, budget_ns: int | None = None) -> int:
        """Owner thread: run queued work for about ``budget_ns`` of real time (None: all of
        it); returns the number of steps and finals run."""
        tasks = self._tasks
        if not tasks:
            return 0
        end = None if budget_ns is None else self._now() + budget_ns
        ran = 0
        while tasks:
            task = tasks[0]
            if task.withdrawn:
                tasks.popleft()
                task.future.cancel()
                continue
            try:
                steps = task.steps
                if steps is not None:
                    while not steps.done():
                        if end is not None:
                            now = self._now()
                            if task.progress_ns == 0:
                                task.progress_ns = now  # queued: the overdue clock starts
                            if (now + steps.next_cost_ns() > end
                                    and now - task.progress_ns < self.overdue_ns):
                                return ran  # the rest waits for the next idle gap
                        steps.step()
                        task.progress_ns = self._now()
                        ran += 1
                    if ran and end is not None and self._now() >= end:
                        return ran  # the final runs in a call of its own
                with task.lock:
                    if task.withdrawn:
                        continue  # popped at the top of the loop
                    task.committed = True
                result = task.final()
            except BaseException as exc:  # handed to the waiting thread, which re-raises it
                tasks.popleft()
                task.future.set_exception(exc)
                ran += 1
                continue
            tasks.popleft()
            task.future.set_result(result)
            ran += 1
            if end is not None and self._now() >= end:
                break
        return ran

    def drain(self, budget_ns: int | None = None) -> int:
        """``SideTask`` form of ``run_pending``."""
        return self.run_pending(budget_ns)

    def close(self) -> None:
        """Withdraw every queued task (their waiters get ``ModelSwapError`` at their timeout)."""
        while self._tasks:
            task = self._tasks.popleft()
            with task.lock:
                if task.committed:
                    continue
                task.withdrawn = True
            task.future.set_exception(ModelSwapError("the owner inbox was closed; nothing was changed"))
