"""Live dashboard data: a side task that samples a service once an interval into a ring.

``DashboardSampler`` is a ``SideTask``.  Each ``interval_s`` (on the service's injected clock)
it takes one *point*: p50/p99/p99.9 of every engine stage and of every priority class's
server total over the interval just ended (the difference of the HDR bucket counts since the
previous point, not the cumulative distribution), requests per second, queue depth per class,
rejects/sheds/degrades per second by reason, ladder answers per second per rung, and drift
scores.  It keeps the last ``capacity`` points (300 at 1 s: five minutes).

Nothing happens on the reply path: the histograms and counters it reads are the ones the
engine, dispatcher and scheduler already keep.  A sample runs on the owner thread from
``drain``, one histogram row per step (interval counts by one subtraction, percentiles by a
two-level search, not a cumulative sum over every bucket), so a side-path slice stays short;
a point is stamped with the time its sample started (rows read a few side-path ticks later
still belong to it).

Each finished point is encoded to JSON once, on the owner thread, and published together with
the header (``Info``) as one immutable tuple: ``data(since)`` — what ``/dashboard/data``
answers — only joins bytes, from any thread (the embedded dashboard's HTTP thread included).
"""

from __future__ import annotations

import bisect
import collections
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from tailguard.clock import Clock
from tailguard.errors import ValidationError
from tailguard.observe.latency import LatencyRecorder, StageHistograms, bucket_high

if TYPE_CHECKING:
    from tailguard.service import Service

__all__ = ["DashboardSampler", "Info", "Point", "dashboard_page", "parse_since"]

#: Percentiles of every latency row, in the order ``Point`` lists them after the count.
PERCENTILES = (50.0, 99.0, 99.9)


class Info(msgspec.Struct, frozen=True):
    """The dashboard header: what is served and how it is sampled."""

    service: str
    #: Lifecycle state of the server ("ready", "draining", ...), or "embedded".
    state: str
    #: The model version each model rung serves (``name/version``).
    versions: dict[str, str]
    interval_s: float
    capacity: int
    classes: list[str]
    stages: list[str]
    #: True when an attached side task reports drift scores.
    drift: bool
    #: The rollout in progress or last seen (``Rollout.rollout_summary``: phase, stage, share,
    #: candidate and stable versions, recent events with reasons); None without one.
    rollout: dict[str, Any] | None = None


class Point(msgspec.Struct, frozen=True, gc=False):
    """One sampling interval.  Latency rows are ``[count, p50_us, p99_us, p999_us]``."""

    #: Seconds on the sampler's (monotonic) clock when the sample started; ``dt_s``: the
    #: length of the interval it covers.
    t: float
    dt_s: float
    #: Per engine stage: engine calls (single or batch) in the interval.
    stages: dict[str, list[float]]
    #: Per priority class: the server's total time per decision (empty when embedded).
    classes: dict[str, list[float]]
    #: Per second: ``engine`` calls, and requests per class (arrivals at the scheduler's door).
    rps: dict[str, float]
    #: Requests waiting per class at the sample.
    queued: dict[str, int]
    #: Per second, by ``outcome:reason`` (``rejected:queue_full``, ``shed:expired``, ...).
    events: dict[str, float]
    #: Ladder answers per second, per rung.
    rungs: dict[str, float]
    #: Latest drift score per signal of every attached drift monitor.
    drift: dict[str, float]
    #: Per second during a rollout: decisions answered by the ``candidate`` and by the ``stable``
    #: version while the rollout routed traffic (empty without one).
    rollout: dict[str, float] = msgspec.field(default_factory=dict)


def parse_since(query: str) -> float | None:
    """The ``since`` parameter of a ``/dashboard/data`` query string (None when absent);
    raises ``ValidationError`` (code ``invalid_request``, field ``since``) when it is not a number."""
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name == "since" and value:
            try:
                since = float(value)
            except ValueError:
                raise ValidationError(f"since must be a number of seconds, got {value[:40]!r}",
                                      field="since") from None
            if since != since:  # NaN compares false with every point
                raise ValidationError("since must be a number of seconds, got NaN", field="since")
            return since
    return None


_PAGE: list[bytes] = []


def dashboard_page() -> bytes:
    """The self-contained dashboard page (HTML with inline CSS and JS; read once)."""
    if not _PAGE:
        _PAGE.append((resources.files("tailguard.observe") / "static" / "dashboard.html").read_bytes())
    return _PAGE[0]


_BLOCK = 1024  # buckets per block of the two-level percentile search


def _percentiles(raw: np.ndarray, max_ns: int) -> list[float]:
    """``[count, p50_us, p99_us, p999_us]`` from one interval's bucket counts (HdrHistogram's
    rank rule; a bucket reports its highest value, capped at the largest value ever seen).
    Two levels, so no cumulative sum over every bucket: the sums of blocks of ``_BLOCK``
    buckets find each rank's block, then a cumulative sum within that block its bucket."""
    if not len(raw):
        return [0.0, 0.0, 0.0, 0.0]
    blocks = np.cumsum(np.add.reduceat(raw, np.arange(0, len(raw), _BLOCK)))
    n = int(blocks[-1])
    if n <= 0:
        return [0.0, 0.0, 0.0, 0.0]
    out = [float(n)]
    for p in PERCENTILES:
        rank = max(1, int(p * n / 100.0 + 0.5))
        b = int(np.searchsorted(blocks, rank))
        before = int(blocks[b - 1]) if b else 0
        lo = b * _BLOCK
        i = lo + int(np.searchsorted(np.cumsum(raw[lo:lo + _BLOCK]), rank - before))
        out.append(min(bucket_high(i), max_ns) / 1e3)
    return out


_NONE = np.zeros(0, dtype=np.int64)


def _sum(rows: list[np.ndarray]) -> np.ndarray:
    """Bucket counts of several histograms added (a shorter row has no counts beyond its end)."""
    live = [r for r in rows if len(r)]
    if len(live) <= 1:
        return live[0] if live else _NONE
    total = np.zeros(max(len(r) for r in live), dtype=np.int64)
    for r in live:
        total[: len(r)] += r
    return total


def _bucket_of(value_ns: int) -> int:
    """``bucket_index`` of one positive int, without numpy's per-call overhead."""
    k = max(value_ns.bit_length() - 11, 0)
    return (value_ns >> k) + k * 1024


class DashboardSampler:
    """Samples ``service`` every ``interval_s`` into a ring of ``capacity`` points (a SideTask).

    ``classes``: per priority class, the histograms of the server's per-decision timings,
    whose last stage is the server total (the dispatcher's recorders; none when embedded).
    ``scheduler_stats``: the scheduler's ``statistics`` (queue depths and reject/shed/degrade
    counts), ``state``: the lifecycle state's name.  ``clock`` defaults to the engine's.

    Owner thread: ``drain``, ``close`` and the constructor; ``data``, ``info`` and
    ``statistics`` may be called from any thread (they read one published tuple).
    """

    def __init__(
        self,
        service: Service,
        *,
        interval_s: float = 1.0,
        capacity: int = 300,
        clock: Clock | None = None,
        classes: Sequence[tuple[str, StageHistograms | LatencyRecorder]] = (),
        scheduler_stats: Callable[[], Mapping[str, Any]] | None = None,
        state: Callable[[], str] | None = None,
    ) -> None:
        if interval_s <= 0 or capacity < 1:
            raise ValueError("a dashboard needs interval_s > 0 and capacity >= 1")
        self.service = service
        self.clock = clock or service.engine.clock
        self.interval_ns = round(interval_s * 1e9)
        self.capacity = capacity
        self._classes = [(n, h.one if isinstance(h, LatencyRecorder) else h) for n, h in classes]
        # Recorders fold only whole chunks on the side path: a sample folds what they still hold.
        self._recorders = [h for _, h in classes if isinstance(h, LatencyRecorder)]
        if service.latency is not None:
            self._recorders.insert(0, service.latency)
        self._scheduler_stats = scheduler_stats
        self._state = state or (lambda: "embedded")
        #: Per (histogram, stage): the bucket counts and the sum at the previous sample.
        self._prev_rows: dict[tuple[str, int], tuple[np.ndarray, int]] = {}
        self._prev_counts: dict[str, int] = {}
        self._ring: collections.deque[tuple[float, bytes]] = collections.deque(maxlen=capacity)
        self._job: Iterator[None] | None = None
        self.closed = False
        self.samples = 0
        #: Longest single step of a sample (one histogram row), in real ns.
        self.max_step_ns = 0
        now = self.clock.now_ns()
        self._last_ns = now
        self._due_ns = now + self.interval_ns
        for _ in self._sample(now, emit=False):  # the baseline: the first point covers one interval
            continue
        self._published: tuple[bytes, tuple[float, ...], tuple[bytes, ...]] = (
            msgspec.json.encode(self._info()), (), ())

    # -- the side path (owner thread) --------------------------------------------------------------
    def drain(self, budget_ns: int | None = None) -> int:
        """Start a sample when one is due and advance the one in progress, for about
        ``budget_ns`` of real time (at least one step; None: to the end).  Returns the steps done."""
        if self.closed:
            return 0
        if self._job is None:
            now = self.clock.now_ns()
            if now < self._due_ns:
                return 0
            self._due_ns += self.interval_ns
            if self._due_ns <= now:  # fell behind (a long pause): do not burst to catch up
                self._due_ns = now + self.interval_ns
            self._job = self._sample(now, emit=True)
        clock = time.perf_counter_ns
        end = None if budget_ns is None else clock() + budget_ns
        steps = 0
        t0 = clock()
        for _ in self._job:
            steps += 1
            t1 = clock()
            self.max_step_ns = max(self.max_step_ns, t1 - t0)
            if end is not None and t1 >= end:
                return steps
            t0 = t1
        # The last step (counters, encoding, publishing) ran inside the loop's final ``next``.
        self.max_step_ns = max(self.max_step_ns, clock() - t0)
        self._job = None
        return steps + 1

    def close(self) -> None:
        """Stop sampling (the points taken stay readable)."""
        self.closed = True
        self._job = None

    # -- readers (any thread) ------------------------------------------------------------------------
    def data(self, since: float | None = None) -> bytes:
        """``{"info": Info, "points": [Point...]}`` as JSON, with the points whose ``t`` is
        greater than ``since`` (all when None)."""
        info, times, points = self._published
        first = 0 if since is None else bisect.bisect_right(times, since)
        return b'{"info":%s,"points":[%s]}' % (info, b",".join(points[first:]))

    def info(self) -> Info:
        """The header as of the latest point."""
        return msgspec.json.decode(self._published[0], type=Info)

    def statistics(self) -> dict[str, Any]:
        """Samples taken, points held, the longest step (µs) and whether one is in progress."""
        return {
            "samples": self.samples,
            "points": len(self._published[1]),
            "max_step_us": round(self.max_step_ns / 1e3, 1),
            "sampling": self._job is not None,
        }

    # -- one sample ------------------------------------------------------------------------------------
    def _sample(self, now_ns: int, emit: bool) -> Iterator[None]:
        """A generator of short steps: each engine histogram's counts copied at once (one copy
        per histogram, so every stage counts the same calls), then one stage's interval counts
        and percentiles per step, one class per step, the counters, and the point."""
        stages: dict[str, list[float]] = {}
        for r in self._recorders:
            r.drain()
            yield
        rec = self.service.latency
        if rec is not None:
            hists = (rec.one, rec.batch)
            snaps = []
            for h in hists:
                snaps.append(_Snapshot(h, range(len(rec.stages))))
                yield
            for j, name in enumerate(rec.stages):
                rows = [self._delta(f"engine{i}", j, snap) for i, snap in enumerate(snaps)]
                stages[name] = _percentiles(_sum(rows), max(snap.max_ns[j] for snap in snaps))
                yield
        classes: dict[str, list[float]] = {}
        for name, h in self._classes:
            last = len(h.stages) - 1  # the server total
            snap = _Snapshot(h, (last,))
            classes[name] = _percentiles(self._delta(f"class:{name}", last, snap), snap.max_ns[last])
            yield
        dt_s = max(now_ns - self._last_ns, 1) / 1e9
        self._last_ns = now_ns
        counts, queued = self._counters()
        rates = {k: (v - self._prev_counts.get(k, 0)) / dt_s for k, v in counts.items()}
        self._prev_counts = counts
        if not emit:
            return
        yield
        rps = {"engine": rates.pop("engine")}
        for name, row in classes.items():  # the scheduler's exact count; else decisions timed
            rps[name] = rates.pop(f"class:{name}", row[0] / dt_s)
        point = Point(
            t=now_ns / 1e9, dt_s=dt_s, stages=stages, classes=classes, rps=rps, queued=queued,
            events={k.partition(":")[2]: v for k, v in rates.items() if k.startswith("event:")},
            rungs={k.partition(":")[2]: v for k, v in rates.items() if k.startswith("rung:")},
            drift=self._drift(),
            rollout={k.partition(":")[2]: v for k, v in rates.items() if k.startswith("rollout:")},
        )
        self._ring.append((point.t, msgspec.json.encode(point)))
        yield
        self.samples += 1
        self._published = (msgspec.json.encode(self._info()), tuple(t for t, _ in self._ring),
                           tuple(p for _, p in self._ring))

    def _delta(self, key: str, j: int, snap: _Snapshot) -> np.ndarray:
        """Stage ``j``'s bucket counts recorded since the previous sample of ``key`` (one
        subtraction over the buckets up to the largest value seen; none when the stage's sum
        did not move: nothing recorded)."""
        prev, prev_sum = self._prev_rows.get((key, j), (_NONE, 0))
        total_ns = snap.sum_ns[j]
        if total_ns == prev_sum:
            return _NONE
        row = snap.rows[j]
        self._prev_rows[(key, j)] = (row, total_ns)
        if total_ns < prev_sum or len(prev) > len(row):  # the histogram was reset meanwhile
            return row
        delta = row.copy()
        delta[: len(prev)] -= prev
        return delta

    def _counters(self) -> tuple[dict[str, int], dict[str, int]]:
        """Cumulative counts (engine calls, rung answers, scheduler events) and queue depths."""
        stats = self.service.engine.statistics()
        counts = {"engine": int(stats["requests"])}
        for rung, r in stats["rungs"].items():
            counts[f"rung:{rung}"] = int(r["answered"])
        summary = self._rollout()
        if summary is not None and "requests" in summary:
            counts["rollout:candidate"] = int(summary["candidate_requests"])
            counts["rollout:stable"] = int(summary["requests"]) - int(summary["candidate_requests"])
        queued: dict[str, int] = {}
        if self._scheduler_stats is not None:
            s = self._scheduler_stats()
            queued = {k: int(v) for k, v in s.get("queued", {}).items()}
            for k, v in s.get("submitted", {}).items():
                counts[f"class:{k}"] = int(v)
            for outcome in ("rejected", "shed", "degraded"):
                for reason, per_class in s.get(outcome, {}).items():
                    counts[f"event:{outcome}:{reason}"] = sum(per_class.values())
        return counts, queued

    def _drift_tasks(self) -> list[Callable[[], Mapping[str, float]]]:
        return [f for t in self.service.side_tasks if (f := getattr(t, "drift_scores", None)) is not None]

    def _drift(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for scores in self._drift_tasks():
            out.update((k, float(v)) for k, v in scores().items())
        return out

    def _rollout(self) -> dict[str, Any] | None:
        """The newest attached rollout's summary (a ``Rollout`` or a ``GoalFollower``)."""
        for t in reversed(self.service.side_tasks):
            f = getattr(t, "rollout_summary", None)
            if f is not None:
                summary: dict[str, Any] = f()
                return summary
        return None

    def _info(self) -> Info:
        engine = self.service.engine
        return Info(
            service=self.service.spec.name,
            state=self._state(),
            versions={r.name: r.label for r in engine.rungs if r.label},
            interval_s=self.interval_ns / 1e9,
            capacity=self.capacity,
            classes=[name for name, _ in self._classes],
            stages=list(self.service.latency.stages) if self.service.latency is not None else [],
            drift=bool(self._drift_tasks()),
            rollout=self._rollout(),
        )


class _Snapshot:
    """The counts (up to each stage's largest value), sums and maxima of some stages of one
    histogram, copied at one instant: what a sample reads while the side path keeps recording."""

    __slots__ = ("max_ns", "rows", "sum_ns")

    def __init__(self, h: StageHistograms, stages: Iterable[int]) -> None:
        self.max_ns = list(h.max_ns)
        self.sum_ns = list(h.sum_ns)
        self.rows: dict[int, np.ndarray] = {}
        for j in stages:
            m = self.max_ns[j]
            self.rows[j] = h.counts[j, : _bucket_of(m) + 1 if m > 0 else 0].copy()
