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
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np

from tailguard.decision import STAGES, BatchDecision, Decision
from tailguard.observe.tap import DECISION, ROWS, DecisionTap, TapReader

if TYPE_CHECKING:
    from tailguard.observe.ring import DecisionRing, RingReader

__all__ = ["LatencyRecorder", "StageHistograms", "bucket_high", "bucket_index"]

PERCENTILES = (50.0, 99.0, 99.9, 99.99)
_MAX_NS = 60_000_000_000
_CHUNK = 1024  # most decisions folded by one numpy pass
_ZEROS = [0] * (_CHUNK * 8)


def _fit(timings: Any, w: int) -> list[int]:
    """A timing tuple of any length as exactly ``w`` integers (cut, or padded with 0)."""
    t = list(timings[:w])
    return t + [0] * (w - len(t))


def bucket_index(values: np.ndarray) -> np.ndarray:
    """HDR bucket index of each value (int64 ns >= 1): exact below 2048, then 1024
    sub-buckets per power of two (3 significant digits, HdrHistogram's own layout)."""
    # The float64 exponent of v is bit_length(v) - 1 (exact for v < 2**53).
    e = (values.astype(np.float64).view(np.int64) >> 52) - 1023
    k = np.maximum(e - 10, 0)
    idx: np.ndarray = (values >> k) + (k << 10)
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
        if rows:
            self.record_array(np.array(rows, dtype=np.int64))

    def record_array(self, values: np.ndarray) -> None:
        """Record an int64 array of shape (n, stages) (extra columns are ignored)."""
        if not len(values):
            return
        a = np.clip(values, 1, _MAX_NS)[:, : len(self.stages)]
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

    def delta(self, since: np.ndarray, sums: list[int]) -> list[Any]:
        """What was recorded since the counts ``since`` and sums ``sums`` (updated to now):
        ``[bucket indexes, counts, max_ns, sums added]`` for ``merge`` in another process — the
        indexes and counts as little-endian int32/int64 ``bytes`` (decoding a list of thousands
        of integers cost the receiving side ~100 µs with cold caches)."""
        d = self._flat - since
        idx = np.flatnonzero(d)
        out = [idx.astype("<i4").tobytes(), d[idx].astype("<i8").tobytes(), list(self.max_ns),
               [a - b for a, b in zip(self.sum_ns, sums, strict=True)]]
        since[:] = self._flat
        sums[:] = self.sum_ns
        return out

    def merge(self, delta: list[Any]) -> None:
        """Add a ``delta`` of histograms kept elsewhere (a side process's fold of the ring)."""
        idx_b, counts_b, top, added = delta
        if idx_b:
            idx = np.frombuffer(idx_b, dtype="<i4")
            self._flat[idx] += np.frombuffer(counts_b, dtype="<i8")  # indexes are distinct: no add.at
        for j in range(min(len(top), len(self.stages))):
            if top[j] > self.max_ns[j]:
                self.max_ns[j] = int(top[j])
            self.sum_ns[j] += int(added[j])

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
    The rings are flat lists of integers (``len(stages)`` per decision): on the reply path a
    decision costs one slice store and one increment, keeps no object alive for the cyclic
    collector, and the side path turns a whole chunk into one numpy array at once.  A
    budgeted ``drain`` folds only whole chunks of ``chunk`` decisions (a chunk's numpy calls
    cost about the same for 20 decisions as for 200: ~0.15-0.6 µs per decision warm), and
    ``chunk`` is 64 because with caches gone cold between requests a fold of 256 took 500-900
    µs, longer than the gap between two requests at 2000/s, against ~300 µs for 64 (more folds,
    each one shorter: the tail of a request arriving during one pays less); ``drain()``
    without a budget (snapshots, scrapes) folds everything.
    Owned by the engine's thread (no locks).
    """

    def __init__(self, capacity: int = 1 << 16, stages: tuple[str, ...] = STAGES, *,
                 chunk: int = 64) -> None:
        self._cap = capacity
        self._w = w = len(stages)
        self._ring_one: list[int] = [0] * (capacity * w)
        self._ring_batch: list[int] = [0] * (capacity * w)
        self._head = [0, 0]  # written
        self._tail = [0, 0]  # drained
        self.chunk = max(1, min(chunk, capacity))
        self._reader: TapReader | None = None
        self._ring: RingReader | None = None
        self._ring_pos = 0
        self._remote = False
        self.dropped = 0
        self.stages = stages
        self.one = StageHistograms(stages)
        self.batch = StageHistograms(stages)

    @staticmethod
    def _put(ring: list[int], slot: int, w: int, timings: Any) -> None:
        """Store one timing tuple of any length as exactly ``w`` integers (pad with 0, cut)."""
        ring[slot * w : slot * w + w] = _fit(timings, w)

    def record(self, timings: Any) -> None:
        """Queue one timing tuple or list in ``stages`` order (reply path: one slice store,
        one increment), for recorders fed by something other than the engine's hooks."""
        h = self._head[0]
        w = self._w
        i = (h % self._cap) * w
        if len(timings) == w:
            self._ring_one[i : i + w] = timings
        else:
            self._put(self._ring_one, h % self._cap, w, timings)
        self._head[0] = h + 1

    def on_decision(self, decision: Decision) -> None:
        """Queue one decision's timings (reply path: one slice store, one increment)."""
        t = decision.timings_ns
        h = self._head[0]
        w = self._w
        i = (h % self._cap) * w
        if len(t) == w:
            self._ring_one[i : i + w] = t
        else:
            self._put(self._ring_one, h % self._cap, w, t)
        self._head[0] = h + 1

    def on_batch(self, decision: BatchDecision) -> None:
        """Queue one batch decision's timings."""
        t = decision.timings_ns
        h = self._head[1]
        w = self._w
        i = (h % self._cap) * w
        if len(t) == w:
            self._ring_batch[i : i + w] = t
        else:
            self._put(self._ring_batch, h % self._cap, w, t)
        self._head[1] = h + 1

    def pending(self) -> int:
        """Timings queued and not yet drained (in the rings, and in the tap when bound)."""
        n = (self._head[0] - self._tail[0]) + (self._head[1] - self._tail[1])
        if self._ring is not None and not self._remote:
            n += self._ring.head() - self._ring_pos
        return n if self._reader is None else n + self._reader.pending()

    @property
    def reader(self) -> TapReader | None:
        """This recorder's position in the tap it is bound to (None: it is an engine hook)."""
        return self._reader

    def bind_tap(self, tap: DecisionTap) -> None:
        """Read decisions' timings from ``tap`` (the service's shared ``DecisionTap``) on the
        side path instead of being an engine hook: one reply-path hook serves every side path
        (``Service.decision_tap`` binds the service's recorder when it makes the tap)."""
        self._reader = tap.reader()

    def bind_ring(self, ring: DecisionRing, *, remote: bool = False) -> None:
        """Read decisions' timings from ``ring`` (the service's ``DecisionRing``, written by a
        compiled hook for a side process), from its next position: the ring is then the only
        reply-path hook (``Service.decision_ring`` binds the service's recorder).  ``remote``:
        the side process reading the ring folds them and sends the histograms back (``merge``),
        so nothing is folded on this core — a fold here costs ~130 µs per 64 decisions with cold
        caches, and evicts what the next decisions need.  Binding again keeps the position."""
        if self._ring is None:
            self._ring = ring.reader()
            self._ring_pos = ring.head
        self._remote = remote

    @property
    def reads_ring(self) -> bool:
        """Whether this recorder reads a ``DecisionRing`` (``bind_ring``)."""
        return self._ring is not None

    @property
    def ring_position(self) -> int:
        """The ring position below which timings are in the histograms."""
        return self._ring_pos

    def merge(self, report: dict[str, Any]) -> None:
        """Histograms a side process folded from the ring up to position ``report["to"]``."""
        self.one.merge(report["one"])
        self.batch.merge(report["batch"])
        self._ring_pos = max(self._ring_pos, int(report["to"]))

    def skip_to(self, position: int) -> None:
        """Timings below ``position`` will never be folded (a side process died before it
        reported them, and the ring has let them go): counted as dropped."""
        if position > self._ring_pos:
            self.dropped += position - self._ring_pos
            self._ring_pos = position

    def unbind_ring(self) -> bool:
        """Fold what the bound ring still holds and stop reading it; False when none was bound."""
        if self._ring is None:
            return False
        self._drain_ring(None)  # what no side process reported: folded here
        self._ring.close()
        self._ring, self._remote = None, False
        return True

    def _drain_ring(self, end: int | None) -> int:
        """Fold the ring's timings from this recorder's position (whole chunks of ``chunk``
        under a budget): single decisions into ``one``, each batch once (its row 0) into
        ``batch``.  Records the writer overwrote before they were read count as dropped."""
        rr = self._ring
        assert rr is not None
        head, pos, cap = rr.head(), self._ring_pos, rr.capacity
        if head - pos > cap:
            self.dropped += head - pos - cap
            pos = head - cap
        whole = 1 if end is None else self.chunk
        most = _CHUNK if end is None else self.chunk
        done = 0
        while head - pos >= whole:
            if end is not None and time.perf_counter_ns() >= end:
                break
            recs = rr.records(pos, min(head, pos + most))
            t = self._fit_columns(recs["timings_ns"])
            single = recs["batch_rows"] == 0
            if single.all():
                self.one.record_array(t)
            else:
                if single.any():
                    self.one.record_array(t[single])
                first = ~single & (recs["batch_row"] == 0)
                if first.any():
                    self.batch.record_array(t[first])
            pos += len(recs)
            done += len(recs)
        self._ring_pos = pos
        return done

    def _fit_columns(self, t: np.ndarray) -> np.ndarray:
        """The ring's five timing columns as ``len(stages)`` int64 columns (cut or zero-padded)."""
        w = self._w
        if t.shape[1] == w:
            return np.array(t, dtype=np.int64)
        out = np.zeros((len(t), w), dtype=np.int64)
        k = min(w, t.shape[1])
        out[:, :k] = t[:, :k]
        return out

    def _drain_tap(self, end: int | None) -> int:
        """Fold the tap's entries (whole chunks of ``chunk`` under a budget); returns how many."""
        r = self._reader
        assert r is not None
        whole = 1 if end is None else self.chunk
        most = _CHUNK if end is None else self.chunk
        done = 0
        w = self._w
        while r.pending() >= whole:
            if end is not None and time.perf_counter_ns() >= end:
                break
            run = r.run(most)
            one = [e[DECISION].timings_ns for e in run if not e[ROWS]]
            if one and set(map(len, one)) == {w}:
                # fromiter over the chained tuples: half the time of np.array(list of tuples)
                flat = np.fromiter(chain.from_iterable(one), dtype=np.int64, count=len(one) * w)
                self.one.record_array(flat.reshape(len(one), w))
            elif one:
                self.one.record_many([_fit(t, w) for t in one])
            many = [e[DECISION].timings_ns for e in run if e[ROWS]]
            if many:
                self.batch.record_many([_fit(t, w) for t in many])
            r.advance(r.position + len(run))
            done += len(run)
        return done

    def drain(self, budget_ns: int | None = None) -> int:
        """Move queued timings into the histograms; returns how many.  ``None``: all of them.
        With a budget: whole chunks of ``chunk`` decisions only, reading the clock before each
        chunk, stopping once ``budget_ns`` has passed (a chunk of 64 costs ~20 µs warm, ~300
        with cold caches)."""
        done = 0
        now = time.perf_counter_ns
        end = None if budget_ns is None else now() + budget_ns
        if self._reader is not None:
            done += self._drain_tap(end)
        if self._ring is not None and not self._remote:
            done += self._drain_ring(end)
        cap, w = self._cap, self._w
        whole = 1 if end is None else self.chunk
        most = _CHUNK if end is None else self.chunk
        for i, (ring, hists) in enumerate(((self._ring_one, self.one), (self._ring_batch, self.batch))):
            head, tail = self._head[i], self._tail[i]
            if head - tail > cap:  # overwritten before we got to them
                self.dropped += head - tail - cap
                tail = head - cap
            while head - tail >= whole:
                if end is not None and now() >= end:
                    break
                # Chunks that do not wrap around the ring, folded in with numpy.
                stop = min(head, tail + most, tail - tail % cap + cap)
                lo, hi = tail % cap, (stop - 1) % cap + 1
                hists.record_array(np.array(ring[lo * w : hi * w], dtype=np.int64).reshape(hi - lo, w))
                # Let the integers go here, in bulk: overwritten later on the reply path, each
                # would be freed there, in memory long gone cold.
                z = (hi - lo) * w
                ring[lo * w : hi * w] = _ZEROS[:z] if z <= len(_ZEROS) else [0] * z
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
