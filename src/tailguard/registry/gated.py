"""``GatedCall``: a function run on a helper thread only while the owner thread lets it.

Loading a model version is a few milliseconds of Python (manifest decoding, hashing, checks,
``ctypes`` set-up).  On another thread it competes with an owner that spins between
decisions — a busy-poll loop, an open-loop pacer: every GIL hand-over to the loader then
costs the owner a switch interval or more, and decisions due meanwhile wait (measured on the
trading model: decisions inside a load delayed 150-280 µs against ~30 µs, several per load,
even with a 20 µs switch interval).  A ``GatedCall`` removes the competition instead of
shortening it: the helper thread runs the function with a profile hook (``sys.setprofile``,
that thread only) that blocks at every function call and return while the gate is closed,
and the owner opens the gate from its idle time — ``step()`` opens it for ``window_ns`` and
waits, releasing the GIL — as one of an ``OwnerInbox`` task's ``Steps``.  Outside the
windows the helper holds no GIL and asks for none, so a decision never waits for it; inside,
the owner is idle anyway (measured: the delays inside loads disappeared).

Granularity: the hook runs between Python and C calls, so one C call longer than a window
runs to its end (``models.trees.preload`` keeps ``dlopen`` off the GIL); ``slack_ns`` in
``next_cost_ns`` leaves room for that and for the owner's wake-up.  Caveat: a helper stopped
at the gate may hold a lock it took (say, an import in progress); the owner must not need that
lock between windows (the load's imports are module-level, done before it starts).

Owner: ``step`` on the owner thread; the helper thread only runs the function.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Generic, TypeVar

__all__ = ["GatedCall"]

T = TypeVar("T")


class GatedCall(Generic[T]):
    """``fn()`` on a helper thread that runs only inside windows the owner opens (``Steps``)."""

    def __init__(self, fn: Callable[[], T], *, window_ns: int = 150_000, slack_ns: int = 150_000,
                 name: str = "tailguard-gated") -> None:
        self.window_ns = window_ns
        self.slack_ns = slack_ns
        self.windows = 0
        self._gate = threading.Event()
        self._finished = threading.Event()
        self._result: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name=name, daemon=True)
        self._thread.start()

    def _hook(self, frame: FrameType, event: str, arg: Any) -> None:
        if not self._gate.is_set():
            self._gate.wait()

    def _run(self, fn: Callable[[], T]) -> None:
        self._gate.wait()
        sys.setprofile(self._hook)
        try:
            self._result = fn()
        except BaseException as exc:  # handed to the owner by result()
            self._error = exc
        finally:
            sys.setprofile(None)
            self._finished.set()

    # -- Steps ----------------------------------------------------------------------------------------
    def done(self) -> bool:
        """Whether the function has returned (or raised)."""
        return self._finished.is_set()

    def next_cost_ns(self) -> int:
        """A window plus the slack for its end (a C call finishing, the owner's wake-up)."""
        return self.window_ns + self.slack_ns

    def step(self) -> None:
        """Owner thread: let the helper run for one window (or until it finishes)."""
        self.windows += 1
        self._gate.set()
        self._finished.wait(self.window_ns / 1e9)
        self._gate.clear()

    def run_all(self) -> T:
        """Let the helper run to the end now (no decision to protect); its result."""
        self._gate.set()
        self._finished.wait()
        return self.result()

    def result(self) -> T:
        """The function's result once ``done``; its exception re-raised when it raised."""
        if not self._finished.is_set():
            raise RuntimeError("the gated call has not finished")
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def abandon(self) -> None:
        """Open the gate for good: the helper finishes on its own (its result is dropped)."""
        self._gate.set()
