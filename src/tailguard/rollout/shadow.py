"""Shadow and comparison runs off the reply path: a bounded, droppable queue of feature rows.

On the reply path ``offer`` keeps a copy of the decision's feature rows (one ``bytes``) and a
reference to the outputs that were served, or — when ``capacity`` items are already waiting —
drops the copy and counts it in ``dropped``.  It never waits and never runs a model.  On the
side path ``drain(budget_ns)`` runs the *other* model on the queued rows: in a shadow stage
the candidate (the reply came from the stable version), in a canary stage the stable version
(the reply came from the candidate), and compares: ``|candidate - stable|`` per row (the
largest over the outputs) goes into the guards' window and into the running summary
(``summary()``: offered, dropped, compared, failed, mean and max ``|diff|``, share over the
tolerance).  In a shadow stage each run is also timed and counted as a candidate run (the
latency and error guards read them).

Replies are never changed: the queue holds copies and only the side path touches models.

Owner: the engine's owner thread (reply path and side path), no locks.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence

import msgspec
import numpy as np

from tailguard.models.repository import LoadedModel
from tailguard.rollout.window import GuardWindow

__all__ = ["Mirror", "MirrorSummary"]


class MirrorSummary(msgspec.Struct, frozen=True, kw_only=True):
    """What the mirror did since it was made: copies offered, dropped (queue full), compared,
    failed (the other model raised or gave non-finite outputs), |candidate - stable| mean and
    max, and the share of compared rows over ``tolerance``."""

    offered: int
    dropped: int
    compared: int
    failed: int
    mean_abs_diff: float
    max_abs_diff: float
    over_tolerance_share: float
    tolerance: float


class Mirror:
    """Runs ``other`` (a loaded model) on copies of served rows, off the reply path.

    ``columns``: the engine's wide column layout (rows are gathered to ``other``'s inputs);
    ``served_rung``: the rung whose answers are comparable (a reply from a lower rung is not
    compared); ``times_other``: True in a shadow stage (``other`` is the candidate: its runs are
    timed into the window)."""

    def __init__(self, other: LoadedModel, columns: Sequence[str], window: GuardWindow, *,
                 served_rung: int, times_other: bool, tolerance: float, now_ns: Callable[[], int],
                 capacity: int = 1024) -> None:
        pos = {c: i for i, c in enumerate(columns)}
        self.other = other
        self._cols = np.array([pos[c] for c in other.manifest.inputs], dtype=np.intp)
        self._width = len(columns)
        self.window = window
        self.served_rung = served_rung
        self.times_other = times_other
        self.tolerance = tolerance
        self._now = now_ns
        self.capacity = capacity
        self._queue: collections.deque[tuple[bytes, np.ndarray]] = collections.deque()
        self.offered = 0
        self.dropped = 0
        self.compared = 0
        self.failed = 0
        self._sum = 0.0
        self._max = 0.0
        self._over = 0

    # -- reply path --------------------------------------------------------------------------------
    def offer(self, rows: np.ndarray, served: np.ndarray, rung_index: int) -> None:
        """Queue a copy of ``rows`` (the decision's feature rows) with the ``served`` outputs, if the
        served rung is the comparable one and the queue has room (else counted, dropped)."""
        if rung_index != self.served_rung:
            return
        self.offered += 1
        if len(self._queue) >= self.capacity:
            self.dropped += 1
            return
        self._queue.append((rows.tobytes(), served))

    def offer_batch(self, rows: np.ndarray, served: np.ndarray, rungs: np.ndarray) -> None:
        """Batch form of ``offer``: only the rows the comparable rung answered are kept."""
        self.offered += 1
        if len(self._queue) >= self.capacity:
            self.dropped += 1
            return
        take = rungs == self.served_rung
        if take.all():
            self._queue.append((rows.tobytes(), served))
        elif take.any():
            self._queue.append((rows[take].tobytes(), served[take]))

    def pending(self) -> int:
        """Copies waiting for the side path."""
        return len(self._queue)

    # -- side path ---------------------------------------------------------------------------------
    def drain(self, budget_ns: int | None = None, real_now: Callable[[], int] | None = None) -> int:
        """Run and compare queued copies for about ``budget_ns`` of ``real_now`` time (None: all);
        returns how many copies were done."""
        q = self._queue
        if not q:
            return 0
        clock = real_now or self._now
        end = None if budget_ns is None else clock() + budget_ns
        done = 0
        run = self.other.runtime.run
        now = self._now
        while q:
            raw, served = q.popleft()
            wide = np.frombuffer(raw, dtype=np.float32).reshape(-1, self._width)
            x = np.ascontiguousarray(wide[:, self._cols])
            t0 = now()
            try:
                y = np.array(run(x), dtype=np.float64)
                ok = bool(np.isfinite(y).all())
            except Exception:
                y, ok = None, False
            t1 = now()
            if self.times_other:
                self.window.record_run(t1 - t0, not ok)
            if ok and y is not None:
                diffs = np.abs(y - served.reshape(y.shape)).max(axis=1)
                self.window.record_diffs(diffs, self.tolerance)
                self.compared += int(diffs.size)
                self._sum += float(diffs.sum())
                self._max = max(self._max, float(diffs.max()))
                self._over += int(np.count_nonzero(diffs > self.tolerance))
            else:
                self.failed += 1
            done += 1
            if end is not None and clock() >= end:
                break
        return done

    def clear(self) -> None:
        """Drop every queued copy (the stage ended)."""
        self._queue.clear()

    def summary(self) -> MirrorSummary:
        """The running comparison summary."""
        c = self.compared
        return MirrorSummary(offered=self.offered, dropped=self.dropped, compared=c, failed=self.failed,
                             mean_abs_diff=self._sum / c if c else 0.0, max_abs_diff=self._max,
                             over_tolerance_share=self._over / c if c else 0.0, tolerance=self.tolerance)
