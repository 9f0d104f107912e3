"""Per-stage latency histograms (HDR layout) fed from the engine's side path.

On the reply path the recorder only stores a reference to the decision's timing tuple in a
preallocated ring (one list store and one integer increment).  ``drain`` moves queued
timings, a chunk at a time, into histograms with HdrHistogram's bucket layout (1 ns to 60 s
at 3 significant digits) kept as numpy count arrays, off the reply path; ``snapshot``
drains and reports p50/p99/p99.9/p99.99 per stage.  If the owner never drains, the ring
overwrites its oldest entries and counts them as dropped: the side path may lose data under
pressure, never the reply.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from tailguard.decision import STAGES, BatchDecision, Decision

__all__ = ["LatencyRecorder", "StageHistograms", "bucket_high", "bucket_index"]

PERCENTILES = (50.0, 99.0, 99.9, 99.99)
_MAX_NS = 60_000_000_000
_CHUNK = 64
_NONES = [None] * _CHUNK


def bucket_index(values: np.ndarray) -> np.ndarray:
    """HDR bucket index of each value (int64 ns >= 1): exact below 2048, then 1024
    sub-buckets per power of two (3 significant digits, HdrHistogram's own layout)."""
    e = np.frexp(values.astype(np.float64))[1]  # == bit_length for positive integers
    k = np.maximum(e - 11, 0)
    idx: np.ndarray = values >> k
    big = k > 0
    idx[big] += (k[big] - 1) * 1024 + 1024
    return idx


def bucket_high(index: int) -> int:
    """The highest value that falls in bucket ``index`` (what HdrHistogram reports)."""
    if index < 2048:
        return index
    k = (index - 2048) // 1024 + 1
    sub = (index - 2048) % 1024 + 1024
    return ((sub + 1) << k) - 1


_N_BUCKETS = int(bucket_index(np.array([_MAX_NS], dtype=np.int64))[0]) + 1


class StageHistograms:
    """One histogram per stage, in ``STAGES`` order; values in integer nanoseconds (clamped to
    1 ns..60 s), 3 significant digits.  Counts live in numpy arrays, so recording a chunk of
    decisions is a few vectorised calls (``np.bincount``), not a Python call per value."""

    def __init__(self, stages: tuple[str, ...] = STAGES) -> None:
        self.stages = stages
        self.counts = np.zeros((len(stages), _N_BUCKETS), dtype=np.int64)
        self._flat = self.counts.reshape(-1)  # a view: scatter-adds land in ``counts``
        self._offsets = np.arange(len(stages), dtype=np.int64) * _N_BUCKETS
        self.max_ns = [0] * len(stages)
        self.sum_ns = [0] * len(stages)

    def record(self, timings: tuple[int, ...]) -> None:
        """Record one timing tuple, one value per stage."""
        self.record_many([timings])

    def record_many(self, rows: list[Any]) -> None:
        """Record many timing tuples at once."""
        if not rows:
            return
        a = np.clip(np.array(rows, dtype=np.int64), 1, _MAX_NS)[:, : len(self.stages)]
        k = a.shape[1]
        # One scatter-add over all stages: row j of ``counts`` starts at j * _N_BUCKETS.
        flat = bucket_index(a) + self._offsets[:k]
        np.add.at(self._flat, flat.ravel(), 1)
        top = a.max(axis=0).tolist()
        tot = a.sum(axis=0).tolist()
        for j in range(k):
            if top[j] > self.max_ns[j]:
                self.max_ns[j] = top[j]
            self.sum_ns[j] += tot[j]

    def reset(self) -> None:
        """Forget everything recorded so far."""
        self.counts[:] = 0
        self.max_ns = [0] * len(self.stages)
        self.sum_ns = [0] * len(self.stages)

    def count(self, stage: int) -> int:
        """Values recorded for stage ``stage``."""
        return int(self.counts[stage].sum())

    def value_at_percentile(self, stage: int, percentile: float) -> int:
        """The value (ns) at ``percentile`` for stage ``stage``: the highest value of the first
        bucket whose cumulative count reaches it, capped at the exact maximum."""
        c = self.counts[stage]
        n = int(c.sum())
        if n == 0:
            return 0
        rank = max(1, int(percentile * n / 100.0 + 0.5))  # HdrHistogram's rank rule
        i = int(np.searchsorted(np.cumsum(c), rank))
        return min(bucket_high(i), self.max_ns[stage])

    def summary(self) -> dict[str, dict[str, float]]:
        """{stage: {count, p50_us, p99_us, p999_us, p9999_us, max_us, mean_us}}."""
        out: dict[str, dict[str, float]] = {}
        for j, name in enumerate(self.stages):
            n = self.count(j)
            row: dict[str, float] = {"count": float(n)}
            for p, key in zip(PERCENTILES, ("p50_us", "p99_us", "p999_us", "p9999_us"), strict=True):
                row[key] = self.value_at_percentile(j, p) / 1e3 if n else 0.0
            row["max_us"] = self.max_ns[j] / 1e3 if n else 0.0
            row["mean_us"] = self.sum_ns[j] / n / 1e3 if n else 0.0
            out[name] = row
        return out


class LatencyRecorder:
    """A side-path hook: queue timings per decision, aggregate into HDR histograms later.

    Separate histograms for single decisions (``predict``) and batches (``predict_batch``).
    Owned by the engine's thread (no locks).
    """

    def __init__(self, capacity: int = 1 << 16, stages: tuple[str, ...] = STAGES) -> None:
        self._cap = capacity
        self._ring_one: list[Any] = [None] * capacity
        self._ring_batch: list[Any] = [None] * capacity
        self._head = [0, 0]  # written
        self._tail = [0, 0]  # drained
        self.dropped = 0
        self.stages = stages
        self.one = StageHistograms(stages)
        self.batch = StageHistograms(stages)

    def record(self, timings: Any) -> None:
        """Queue one timing tuple or list in ``stages`` order (reply path: one list store,
        one increment), for recorders fed by something other than the engine's hooks."""
        h = self._head[0]
        self._ring_one[h % self._cap] = timings
        self._head[0] = h + 1

    def on_decision(self, decision: Decision) -> None:
        """Queue one decision's timings (reply path: one list store, one increment)."""
        h = self._head[0]
        self._ring_one[h % self._cap] = decision.timings_ns
        self._head[0] = h + 1

    def on_batch(self, decision: BatchDecision) -> None:
        """Queue one batch decision's timings."""
        h = self._head[1]
        self._ring_batch[h % self._cap] = decision.timings_ns
        self._head[1] = h + 1

    def pending(self) -> int:
        """Timings queued and not yet drained."""
        return (self._head[0] - self._tail[0]) + (self._head[1] - self._tail[1])

    def drain(self, budget_ns: int | None = None) -> int:
        """Move queued timings into the histograms, for at most ``budget_ns`` (None: all);
        returns how many.  Works in chunks of up to 64 decisions, reading the clock between
        chunks (a chunk costs about 25 µs)."""
        done = 0
        now = time.perf_counter_ns
        end = None if budget_ns is None else now() + budget_ns
        for i, (ring, hists) in enumerate(((self._ring_one, self.one), (self._ring_batch, self.batch))):
            head, tail = self._head[i], self._tail[i]
            if head - tail > self._cap:  # overwritten before we got to them
                self.dropped += head - tail - self._cap
                tail = head - self._cap
            cap = self._cap
            while tail < head:
                if end is not None and now() >= end:
                    break
                # Chunks that do not wrap around the ring, folded in with numpy.
                stop = min(head, tail + _CHUNK, tail - tail % cap + cap)
                lo, hi = tail % cap, (stop - 1) % cap + 1
                hists.record_many(ring[lo:hi])
                # Let the timing tuples go now: kept until overwritten, every decision would
                # leave one object alive for the cyclic collector to walk.
                ring[lo:hi] = _NONES[: hi - lo]
                done += stop - tail
                tail = stop
            self._tail[i] = tail
        return done

    def reset(self) -> None:
        """Forget everything recorded so far."""
        self.drain()
        self.one.reset()
        self.batch.reset()

    def snapshot(self) -> dict[str, Any]:
        """Drain, then {"predict": {stage: percentiles}, "predict_batch": ..., "dropped": n}."""
        self.drain()
        return {
            "predict": self.one.summary(),
            "predict_batch": self.batch.summary(),
            "dropped": self.dropped,
        }
