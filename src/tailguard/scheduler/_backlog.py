"""The backlog: every queued job, the expected work ahead, and how jobs leave unbatched.

The ``Backlog`` holds one ``ClassQueue`` per priority class, the count over all of them,
the predicted end of the batches in flight (``busy_until``), a deadline heap with lazy
deletion, and the *outbox* of jobs handed back outside batches: expired (degraded to a cheap
rung or rejected, per class policy), moved to a cheaper model rung, shed under overload,
cancelled, drained.  It also caches what admission and batching read from the cost model on
every request (each model rung's per-job share of a full batch, the cheapest model rung's
single-job time), refreshed when the model's ``version`` moves.  The ``Scheduler`` owns one;
one thread; integer ns.
"""

from __future__ import annotations

import math
from heapq import heapify, heappop, heappush
from typing import Generic, TypeVar

from tailguard.scheduler._counters import Counters
from tailguard.scheduler._queues import ClassQueue
from tailguard.scheduler.costs import CostModel
from tailguard.scheduler.job import Admit, Job, Verdict
from tailguard.scheduler.policy import OnTimeout, Reason, SchedulerConfig

__all__ = ["Backlog"]

P = TypeVar("P")

_ANSWER_NOW, _REJECTED = Admit.ANSWER_NOW, Admit.REJECTED
_EXPIRED, _SHED = Reason.EXPIRED, Reason.SHED_OVERLOAD


#: At most one cost refresh per this many ns (see ``Backlog.maybe_refresh``).
REFRESH_NS = 2_000_000


class Backlog(Generic[P]):
    """The queued jobs of every class and the ways they leave other than in a batch (see the
    module docstring).  ``queues`` are in level order; ``total`` counts live jobs."""

    __slots__ = ("_heap_limit", "_model_rungs", "_seq", "busy_until", "caps", "cheap",
                 "config", "cost_version", "costs", "counters", "degrade", "dropped", "heap", "min_cost",
                 "per_row", "per_row_free", "queues", "refreshed_ns", "total")

    def __init__(self, config: SchedulerConfig, costs: CostModel, counters: Counters) -> None:
        self.config = config
        self.costs = costs
        self.counters = counters
        classes = config.by_level
        n = config.n_rungs
        self.queues: list[ClassQueue[P]] = [ClassQueue(p, i, n) for i, p in enumerate(classes)]
        self.cheap = [r in config.cheap_rungs for r in range(n)]
        self.degrade = [p.on_timeout is OnTimeout.DEGRADE for p in classes]
        self.total = 0
        self.busy_until = 0
        self.heap: list[tuple[int, int, Job[P]]] = []
        self.dropped: list[tuple[Job[P], Verdict]] = []
        self._heap_limit = 2 * config.max_total_queued + 1024
        self._seq = 0
        self._model_rungs = config.model_rungs
        self.cost_version = -1
        self.refreshed_ns = -(1 << 62)
        #: Per class, per rung: a queued single-row job's share of the work (ns).
        self.per_row = [[0] * n for _ in classes]
        #: The same without the preemption bound (no higher-class traffic lately).
        self.per_row_free = [[0] * n for _ in classes]
        #: Per class: the longest batch it may form (the preemption bound; inf for the top).
        self.caps: list[float] = [math.inf] * len(classes)
        self.min_cost = 0

    def maybe_refresh(self, now_ns: int, horizon: bool = True) -> None:
        """``refresh`` unless one ran in the last ``REFRESH_NS``: with noisy timings the cost
        model moves every few batches, and a refresh (every class, every rung, every batch
        size) costs far more than admitting a request.  Values lag by at most that long."""
        if now_ns - self.refreshed_ns >= REFRESH_NS or self.cost_version < 0:
            self.refreshed_ns = now_ns
            self.refresh()
        elif horizon:
            # The expiry horizon stays exact (two lookups): a stale one could leave a job that
            # must expire in the queue while its wake-up time says "now".
            self.min_cost = min(self.costs.expected_ns(r, 1) for r in self._model_rungs)

    def refresh(self) -> None:
        """Re-read the cost model (callers first compare ``cost_version`` with its version):
        per model rung the per-job share of a full batch (``per_row``), and the cheapest model
        rung's single-job time (``min_cost``, the expiry horizon)."""
        costs = self.costs
        top = self.config.max_batch_size
        # Rows depend on the class only through its cap: fill each distinct cap once.
        done: dict[float, list[int]] = {}
        for c, cap in enumerate((*self.caps, math.inf)):
            row = done.get(cap)
            if row is None:
                row = done[cap] = [0] * len(self.cheap)
                self._fill_per_row(row, cap, top)
            if c < len(self.caps):
                self.per_row[c][:] = row
        free = done[math.inf]
        for row in self.per_row_free:
            row[:] = free
        self.min_cost = min(costs.expected_ns(r, 1) for r in self._model_rungs)
        self.cost_version = costs.version

    def _fill_per_row(self, row: list[int], cap: float, top: int) -> None:
        costs = self.costs
        for r in self._model_rungs:
            # A backlog drains in batches as large as this class can grow them: batches grow
            # one job at a time while the mean batch time stays within the class's preemption
            # bound (``cap``), so the per-row mean at the largest such batch size.  The mean,
            # not the expectation: queued work adds up many batches.
            b = 1
            while b < top and costs.mean_ns(r, min(b * 2, top)) <= cap:
                b = min(b * 2, top)
            row[r] = max(costs.mean_ns(r, b) // b, 1)

    def push(self, job: Job[P], q: ClassQueue[P], share_ns: int) -> None:
        """Queue ``job`` at the tail of ``q`` with its share of the work, and note its deadline."""
        q.push(job, share_ns)
        self.total += 1
        self._seq += 1
        heap = self.heap
        heappush(heap, (job.deadline_ns, self._seq, job))
        if len(heap) > self._heap_limit:
            # Amortized O(1): the limit is far above the live bound, max_total_queued.
            self.heap = [e for e in heap if e[2].queued and e[2].deadline_ns == e[0]]
            heapify(self.heap)

    def retry_ns(self, c: int, now_ns: int) -> int:
        """Retry-after hint for class ``c``: the expected time for its queue and those above it
        (and the batch in flight) to drain, at least the configured floor."""
        ahead = self.busy_until - now_ns if self.busy_until > now_ns else 0
        queues = self.queues
        for i in range(c + 1):
            ahead += queues[i].work_ns
        floor = self.config.retry_after_floor_ns
        return ahead if ahead > floor else floor

    # -- expiry -----------------------------------------------------------------------------
    def late_head(self, job: Job[P], q: ClassQueue[P], now_ns: int, start: int) -> None:
        """``job`` heads its class but cannot finish in time at its rung if started at
        ``start``: move it to the first later rung that fits (DEGRADE policy; a cheap rung
        hands it back as ANSWER_NOW, a model rung keeps its place in line), else expire it."""
        q.pop_head(job)
        self.total -= 1
        c = q.index
        if self.degrade[c]:
            costs = self.costs
            for r in range(job.rung + 1, self.config.n_rungs):
                if self.cheap[r]:
                    if now_ns + costs.expected_ns(r, job.rows) <= job.deadline_ns:
                        self._hand_back(job, c, Verdict(_ANSWER_NOW, _EXPIRED, r, 0))
                        return
                elif start + (e := costs.expected_ns(r, job.rows)) <= job.deadline_ns:
                    job.rung = r
                    q.push_front(job, e if job.rows != 1 or not job.batchable else self.per_row[c][r])
                    self.total += 1
                    self.counters.degraded[_EXPIRED][c] += 1
                    return
        self._hand_back(job, c, Verdict(_REJECTED, _EXPIRED, job.rung, self.retry_ns(c, now_ns)))

    def sweep(self, now_ns: int, start: int) -> None:
        """Expire every queued job whose deadline comes before even the cheapest model rung
        could finish if started at ``start`` (cheap rung per policy, else rejected)."""
        heap = self.heap
        horizon = start + self.min_cost
        costs = self.costs
        while heap and heap[0][0] < horizon:
            d, _, job = heappop(heap)
            if not job.queued or job.deadline_ns != d:
                continue  # already left the queue (lazy deletion)
            c = job.level_index
            self.queues[c].forget(job)
            self.total -= 1
            if self.degrade[c]:
                r = next((r for r in range(job.rung + 1, self.config.n_rungs)
                          if self.cheap[r] and now_ns + costs.expected_ns(r, job.rows) <= d), None)
                if r is not None:
                    self._hand_back(job, c, Verdict(_ANSWER_NOW, _EXPIRED, r, 0))
                    continue
            self._hand_back(job, c, Verdict(_REJECTED, _EXPIRED, job.rung, self.retry_ns(c, now_ns)))

    def next_expiry_ns(self) -> int | None:
        """When ``sweep`` will next find work if nothing is in flight (None: no live deadline);
        drops dead entries from the top of the heap on the way."""
        heap = self.heap
        while heap and (not heap[0][2].queued or heap[0][2].deadline_ns != heap[0][0]):
            heappop(heap)
        return heap[0][0] - self.min_cost + 1 if heap else None

    def _hand_back(self, job: Job[P], c: int, verdict: Verdict) -> None:
        ctr = self.counters
        ctr.expired[c] += 1
        if verdict.kind is _ANSWER_NOW:
            ctr.degraded[_EXPIRED][c] += 1
        else:
            ctr.rejected[_EXPIRED][c] += 1
        self.dropped.append((job, verdict))

    # -- other exits ------------------------------------------------------------------------
    def make_room(self, c: int, now_ns: int) -> bool:
        """Shed the newest job of the lowest class below ``c`` that has one, as
        REJECTED(SHED_OVERLOAD) into the outbox (False: no such job)."""
        for v in range(len(self.queues) - 1, c, -1):
            job = self.queues[v].pop_newest()
            if job is not None:
                self.total -= 1
                self.counters.shed[v] += 1
                self.counters.shed_by[_SHED][v] += 1
                self.dropped.append((job, Verdict(_REJECTED, _SHED, job.rung, self.retry_ns(v, now_ns))))
                return True
        return False

    def cancel(self, job: Job[P]) -> bool:
        """Take a live ``job`` out of its queue (True), or False if it is not queued."""
        if not job.queued:
            return False
        c = job.level_index
        self.queues[c].forget(job)
        self.total -= 1
        self.counters.cancelled[c] += 1
        return True

    def drain(self) -> list[Job[P]]:
        """Remove and return every queued job, by class then age."""
        jobs: list[Job[P]] = []
        for c, q in enumerate(self.queues):
            js = q.drain()
            self.counters.drained[c] += len(js)
            jobs.extend(js)
        self.total = 0
        self.heap.clear()
        return jobs
