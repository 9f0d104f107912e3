"""Per-stage latency histograms (HDR) fed from the engine's side path.

On the reply path the recorder only stores a reference to the decision's timing tuple in a
preallocated ring (one list store and one integer increment).  ``drain`` moves queued
timings into HdrHistogram (``hdrhistogram`` package: 1 ns to 60 s at 3 significant digits)
off the reply path; ``snapshot`` drains and reports p50/p99/p99.9/p99.99 per stage.  If the
owner never drains, the ring overwrites its oldest entries and counts them as dropped: the
side path may lose data under pressure, never the reply.
"""

from __future__ import annotations

import time
from typing import Any

from hdrh.histogram import HdrHistogram

from tailguard.decision import STAGES, BatchDecision, Decision

__all__ = ["LatencyRecorder", "StageHistograms"]

PERCENTILES = (50.0, 99.0, 99.9, 99.99)
_MAX_NS = 60_000_000_000


class StageHistograms:
    """One HDR histogram per stage, in ``STAGES`` order; values in integer nanoseconds."""

    def __init__(self, stages: tuple[str, ...] = STAGES) -> None:
        self.stages = stages
        self.hist = [HdrHistogram(1, _MAX_NS, 3) for _ in stages]

    def record(self, timings: tuple[int, ...]) -> None:
        """Record one timing tuple, one value per stage (ns, clamped to 1 ns..60 s)."""
        for h, v in zip(self.hist, timings, strict=False):
            h.record_value(min(max(v, 1), _MAX_NS))

    def reset(self) -> None:
        """Forget everything recorded so far."""
        for h in self.hist:
            h.reset()

    def summary(self) -> dict[str, dict[str, float]]:
        """{stage: {count, p50_us, p99_us, p999_us, p9999_us, max_us, mean_us}}."""
        out: dict[str, dict[str, float]] = {}
        for name, h in zip(self.stages, self.hist, strict=True):
            n = h.get_total_count()
            row: dict[str, float] = {"count": float(n)}
            for p, key in zip(PERCENTILES, ("p50_us", "p99_us", "p999_us", "p9999_us"), strict=True):
                row[key] = h.get_value_at_percentile(p) / 1e3 if n else 0.0
            row["max_us"] = h.get_max_value() / 1e3 if n else 0.0
            row["mean_us"] = h.get_mean_value() / 1e3 if n else 0.0
            out[name] = row
        return out


class LatencyRecorder:
    """A side-path hook: queue timings per decision, aggregate into HDR histograms later.

    Separate histograms for single decisions (``predict``) and batches (``predict_batch``).
    Owned by the engine's thread (no locks).
    """

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._cap = capacity
        self._ring_one: list[Any] = [None] * capacity
        self._ring_batch: list[Any] = [None] * capacity
        self._head = [0, 0]  # written
        self._tail = [0, 0]  # drained
        self.dropped = 0
        self.one = StageHistograms()
        self.batch = StageHistograms()

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
        returns how many.  The clock is read every 16 items (a record costs ~3 us)."""
        done = 0
        now = time.perf_counter_ns
        end = None if budget_ns is None else now() + budget_ns
        for i, (ring, hists) in enumerate(((self._ring_one, self.one), (self._ring_batch, self.batch))):
            head, tail = self._head[i], self._tail[i]
            if head - tail > self._cap:  # overwritten before we got to them
                self.dropped += head - tail - self._cap
                tail = head - self._cap
            while tail < head:
                if end is not None and done % 16 == 0 and now() >= end:
                    break
                hists.record(ring[tail % self._cap])
                tail += 1
                done += 1
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
