"""The drift monitor's reply-path intake: decisions into preallocated rings, rows out on the side path.

On the reply path (``on_decision``/``on_batch``, engine hooks) the ring takes a copy of the
decision's feature rows — one numpy row copy, or one slice copy for a batch (two when it
wraps) — and a reference to the decision itself (read-only, so nothing else is copied), plus
the decision time when labels are on.  Nothing is allocated, formatted or locked there.  A
decision that does not fit in the free part of the ring is dropped and counted (rows and
decisions), never waited for.

On the side path ``_convert`` turns queued decisions into output rows beside the feature
rows: the monitored model's answers (rung 0, the model the reference was built on) as they
are, other rungs' answers as NaN (a fallback's answer says nothing about the model's
prediction drift); with labels on it also remembers each row's key, time and served value
for ``PendingPredictions``.  ``_take`` then copies converted rows out, freeing ring space.

Pointers (monotonic row counts; the ring index is ``count & mask``):
``tail <= conv <= head``: rows ``[tail, conv)`` are converted, ``[conv, head)`` are not.

Owner: one thread — the engine's (hooks) which is also the side path's (``Service.run_side_path``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tailguard.decision import BatchDecision, Decision
from tailguard.engine import Engine
from tailguard.observe.labels import PendingPredictions, key_of, row_keys
from tailguard.observe.tap import DECISION, FEATURES, ROWS, DecisionTap, TapReader, decided_ns, singles

__all__ = ["DecisionRing"]


class DecisionRing:
    """Feature rows and decisions of the last ``capacity`` rows (rounded up to a power of two)."""

    def __init__(self, n_features: int, n_outputs: int, capacity: int, *, engine: Engine | None = None,
                 stamp: Callable[[], int] | None = None, pending: PendingPredictions | None = None,
                 label_output: int = 0) -> None:
        cap = 1 << max(6, (capacity - 1).bit_length())
        self.capacity = cap
        self._mask = cap - 1
        self._feat = np.zeros((cap, n_features), dtype=np.float32)
        self._out = np.zeros((cap, n_outputs), dtype=np.float32)
        self._items: list[Any] = [None] * cap
        self._stamps = [0] * cap
        self._stamp = stamp
        self._pending = pending
        self._label_output = label_output
        self.engine = engine
        # A view of the engine's first wide row; re-taken after every batch because a batch
        # larger than the engine's buffer replaces it (see Engine.predict_batch).
        self._row = engine.last_features(1)[0] if engine is not None else None
        self._head = self._conv = self._tail = 0
        self._reader: TapReader | None = None
        self.recorded_rows = 0
        self.dropped_rows = 0
        self.dropped_decisions = 0

    # -- reply path -------------------------------------------------------------------------------
    def on_decision(self, d: Decision) -> None:
        """Copy one decision's feature row and keep the decision (O(1), no allocation)."""
        h = self._head
        if h - self._tail >= self.capacity:
            self.dropped_rows += 1
            self.dropped_decisions += 1
            return
        i = h & self._mask
        self._feat[i] = self._row
        self._items[i] = d
        if self._stamp is not None:
            self._stamps[i] = self._stamp()
        self._head = h + 1

    def on_batch(self, d: BatchDecision) -> None:
        """Copy a batch's feature rows (one slice copy) and keep the decision."""
        engine = self.engine
        assert engine is not None
        self._row = engine.last_features(1)[0]
        self._put(engine.last_features(d.outputs.shape[0]), d)

    def record(self, features: np.ndarray, outputs: np.ndarray) -> bool:
        """Queue rows without an engine (embedded use, benchmarks): ``features`` (n, F) in the
        reference's column order, ``outputs`` (n, K) of the monitored model.  False: dropped."""
        # A copy: the caller may reuse its buffer before the side path converts these rows.
        out = np.array(outputs, dtype=np.float32, copy=True).reshape(len(features), -1)
        return self._put(np.asarray(features, dtype=np.float32), out)

    # -- from a shared tap (side path) --------------------------------------------------------------
    def bind_tap(self, tap: DecisionTap) -> None:
        """Take decisions from ``tap`` (the service's one shared copy, ``Service.attach`` binds
        it) on the side path instead of copying them in hooks."""
        self._reader = tap.reader()

    def _pull(self) -> int:
        """Move every decision the tap holds for this ring into it (dropping what does not fit,
        as the hooks would); returns how many.  Decision times are the tap's (engine clock)."""
        r = self._reader
        if r is None:
            return 0
        tap = r.tap
        missed = r.missed()
        if missed:
            self.dropped_decisions += missed
        pos, head = r.position, tap.head
        width = self._feat.shape[1]
        p = pos
        while p < head:
            free = self.capacity - (self._head - self._tail)
            run = tap.entries(p, min(head - p, tap.capacity - (p & tap.mask), max(free, 1)))
            if free > 0 and singles(run):  # the common case: one copy for the run
                m = len(run)
                joined = b"".join([e[FEATURES] for e in run])
                feats = np.frombuffer(joined, dtype=np.float32).reshape(m, width)
                stamps = [decided_ns(e) for e in run] if self._stamp is not None else []
                self._put_run(feats, [e[DECISION] for e in run], stamps)
                p += m
            else:
                e = run[0]
                n = e[ROWS] or 1
                rows = np.frombuffer(e[FEATURES], dtype=np.float32).reshape(n, width)
                self._put(rows, e[DECISION], decided_ns(e))
                p += 1
        r.advance(head)
        return head - pos

    def _put_run(self, feats: np.ndarray, items: list[Any], stamps: list[int]) -> None:
        """Queue a run of single decisions that fits in the free part of the ring."""
        m = len(items)
        h = self._head
        i = h & self._mask
        first = min(m, self.capacity - i)
        self._feat[i:i + first] = feats[:first]
        self._items[i:i + first] = items[:first]
        if self._stamp is not None:
            self._stamps[i:i + first] = stamps[:first]
        if first < m:
            self._feat[:m - first] = feats[first:]
            self._items[:m - first] = items[first:]
            if self._stamp is not None:
                self._stamps[:m - first] = stamps[first:]
        self._head = h + m

    def _put(self, rows: np.ndarray, item: Any, stamp: int | None = None) -> bool:
        n = rows.shape[0]
        h = self._head
        if h + n - self._tail > self.capacity:
            self.dropped_rows += n
            self.dropped_decisions += 1
            return False
        i = h & self._mask
        first = min(n, self.capacity - i)
        self._feat[i:i + first] = rows[:first]
        if first < n:
            self._feat[:n - first] = rows[first:]
        self._items[i] = item
        if self._stamp is not None:
            self._stamps[i] = self._stamp() if stamp is None else stamp
        self._head = h + n
        return True

    # -- side path --------------------------------------------------------------------------------
    @property
    def queued_rows(self) -> int:
        """Rows not yet taken by the side path (in the ring, or still in the shared tap)."""
        n = self._head - self._tail
        r = self._reader
        if r is not None:
            tap = r.tap
            for p in range(r.position, tap.head):
                n += tap.slots[p & tap.mask][ROWS] or 1
        return n

    def _convert(self, limit: int) -> int:
        """Turn up to about ``limit`` queued rows (whole decisions) into output rows."""
        done = 0
        items, out, mask, pending = self._items, self._out, self._mask, self._pending
        while self._conv < self._head and done < limit:
            c = self._conv
            i = c & mask
            item = items[i]
            items[i] = None
            if type(item) is Decision:
                if item.rung_index == 0:
                    out[i] = item.outputs
                else:
                    out[i] = np.nan
                n = 1
                if pending is not None:
                    pending.add(key_of(item.key), self._stamps[i], float(item.outputs[self._label_output]))
            else:
                if type(item) is BatchDecision:
                    block = item.outputs.astype(np.float32)
                    block[item.rungs != 0] = np.nan
                    if pending is not None:
                        t = self._stamps[i]
                        served = item.outputs[:, self._label_output].tolist()
                        for k, v in zip(row_keys(item.keys, len(served)), served, strict=True):
                            pending.add(k, t, v)
                else:
                    block = item
                n = block.shape[0]
                first = min(n, self.capacity - i)
                out[i:i + first] = block[:first]
                if first < n:
                    out[:n - first] = block[first:]
            self._conv = c + n
            done += n
        return done

    def _take(self, features: np.ndarray, outputs: np.ndarray, n: int) -> None:
        """Copy the next ``n`` converted rows into ``features``/``outputs`` and free them."""
        assert n <= self._conv - self._tail
        i = self._tail & self._mask
        first = min(n, self.capacity - i)
        features[:first] = self._feat[i:i + first]
        outputs[:first] = self._out[i:i + first]
        if first < n:
            features[first:n] = self._feat[:n - first]
            outputs[first:n] = self._out[:n - first]
        self._tail += n
        self.recorded_rows += n
