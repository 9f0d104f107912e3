"""The deadline-aware scheduler: admission at the door, priority queues, adaptive batches.

Admission predicts when a request would finish: the batch still in flight (``busy_until``),
plus the queued work of its own and higher classes (a running per-class sum of each job's
share of an expected full batch), plus its own batch at its rung.  If that misses the
deadline, a ``DEGRADE`` class tries the next rungs in ladder order: a cheap rung answers at
the door (``ANSWER_NOW``), a cheaper model rung queues there; else, and always for a
``REJECT`` class, the request is refused with a retry-after.  ``next_batch`` serves classes
in strict priority with a starvation guard, and grows a batch of one class and one rung in
FIFO order while the expected batch time still meets the tightest deadline in it.  Queued
jobs that can no longer make it are handed back by the ``Backlog`` (see there).

Ownership: one thread (the server's event loop) calls everything; no locks, no sleeping,
every time is an argument (integer monotonic ns).  Every submitted job comes back exactly
once: in its ``submit`` verdict (not queued), in a ``Batch``, as a ``(job, Verdict)`` from
``take_dropped``/``expire`` (expired, degraded in the queue, shed), from ``drain``, or as a
True from ``cancel``.  Call ``take_dropped`` after ``submit`` and ``next_batch`` (cheap when
empty; ``has_dropped`` says whether there is anything).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

from tailguard.errors import UnknownPriority
from tailguard.scheduler._backlog import Backlog
from tailguard.scheduler._counters import Counters
from tailguard.scheduler.costs import CostModel
from tailguard.scheduler.job import Admit, Batch, Job, Verdict
from tailguard.scheduler.policy import Reason, SchedulerConfig
from tailguard.scheduler.ratelimit import ClientLimiter

__all__ = ["Admit", "Batch", "Scheduler", "Verdict"]

P = TypeVar("P")

_NEVER = -(1 << 62)
_QUEUED, _ANSWER_NOW, _REJECTED = Admit.QUEUED, Admit.ANSWER_NOW, Admit.REJECTED
_PREDICTED_LATE, _RATE_LIMITED = Reason.PREDICTED_LATE, Reason.RATE_LIMITED


_WINDOW_NS = 5_000_000  # load windows at the door
#: A rung with no batch for this long while requests are predicted late there gets one probe.
PROBE_INTERVAL_NS = 500_000_000
_ACTIVE_NS = 50_000_000  # a class with an arrival this recent bounds the batches below it
_SMOOTH = 0.5  # weight of the newest window
_MIN_FREE = 0.02  # a class left under 2 % of the time waits at most 50 x its queued work


class Scheduler(Generic[P]):
    """Admission, per-priority queues and batching for one dispatcher (see the module
    docstring).  ``costs`` is shared with the caller, who may read it; the scheduler feeds it
    through ``observe``.  ``max_clients`` bounds the rate limiter's client table."""

    __slots__ = (
        "_backlog",
        "_batch",
        "_cap_ns",
        "_closed",
        "_default",
        "_flight",
        "_in_flight",
        "_index",
        "_ingress_ns",
        "_ingress_util",
        "_last_arrival",
        "_last_guard",
        "_limiter",
        "_max_total",
        "_probe_at",
        "_probe_job",
        "_probe_seen",
        "_probing",
        "_queued_verdicts",
        "_stretch",
        "_util",
        "_wake",
        "_win_ingress",
        "_win_start",
        "_win_work",
        "classes",
        "config",
        "costs",
        "counters",
        "names",
    )

    def __init__(self, config: SchedulerConfig, costs: CostModel, *, max_clients: int = 65_536) -> None:
        if costs.n_rungs != config.n_rungs:
            raise ValueError(f"cost model has {costs.n_rungs} rungs, config {config.n_rungs}")
        self.config = config
        self.costs = costs
        self.classes = config.by_level
        self.names = tuple(c.name for c in self.classes)
        self._index = {n: i for i, n in enumerate(self.names)}
        self._default = self._index[config.default_class or config.classes[0].name]
        self.counters = Counters(len(self.classes))
        self._backlog: Backlog[P] = Backlog(config, costs, self.counters)
        rl = config.rate_limit
        self._limiter = None if rl is None else ClientLimiter(rl, max_clients)
        self._queued_verdicts = tuple(Verdict(_QUEUED, None, r, 0) for r in range(config.n_rungs))
        self._batch = config.max_batch_size
        # Preemption bound: requests are not read while a batch runs, so a batch of a lower
        # class may take at most ``batch_share`` of the tightest budget of any class above it
        # (a higher-class request arriving meanwhile keeps the rest).  The top class: no cap.
        self._cap_ns: list[float] = []
        tightest = math.inf
        for c in self.classes:
            self._cap_ns.append(tightest * config.batch_share if tightest < math.inf else math.inf)
            tightest = min(tightest, c.budget_ns)
        self._backlog.caps = self._cap_ns
        self._last_arrival = [-(1 << 62)] * len(self.classes)
        self._flight: deque[int] = deque()  # the class of each batch handed out, in order
        self._max_total = config.max_total_queued
        # Load, per window of ``_WINDOW_NS``: the measured batch time of each class and the
        # ingress time every request costs (reading, decoding, admitting it — paid even for a
        # refusal).  A class's queue drains only in
        # the time the classes above it and the ingress of everyone leave free, so its
        # predicted wait is stretched by 1 / (1 - that load): under overload the lowest class
        # is refused at the door instead of expiring in the queue after costing its admission.
        n = len(self.classes)
        self._win_start = 0
        self._win_work = [0] * n
        self._win_ingress = 0.0
        self._util = [0.0] * n
        self._ingress_util = 0.0
        self._stretch = [1.0] * n
        self._ingress_ns = 0.0
        self._in_flight = 0
        self._last_guard = _NEVER
        self._wake: int | None = None
        self._closed = False
        # Cost probes (``_late_at_door``): per rung, the observation count last seen there, when
        # a probe may be admitted if it has not moved by then, and whether one is out.
        self._probe_seen = [-1] * config.n_rungs
        self._probe_at = [0] * config.n_rungs
        self._probing = [False] * config.n_rungs
        self._probe_job: Job[P] | None = None  # the probe while queued (its rung may not drop it)

    # -- the door ---------------------------------------------------------------------------
    def class_index(self, name: str | None) -> int:
        """The level-order index of the class called ``name`` (None: the default class);
        ``UnknownPriority`` for a name the config does not declare."""
        if name is None:
            return self._default
        try:
            return self._index[name]
        except KeyError:
            raise UnknownPriority(f"unknown priority class {name!r}", field="priority") from None

    def deadline_for(self, class_index: int, arrival_ns: int, budget_ns: int | None = None) -> int:
        """The absolute deadline (ns) of a request of class ``class_index`` arriving at
        ``arrival_ns``: its class budget, or ``budget_ns`` when that is shorter (a request may
        shorten its budget, never lengthen it; a negative budget counts as 0)."""
        b = self.classes[class_index].budget_ns
        if budget_ns is not None and budget_ns < b:
            b = budget_ns if budget_ns > 0 else 0
        return arrival_ns + b

    def make_job(self, payload: P, now_ns: int, priority: str | None = None, budget_ns: int | None = None,
                 client_id: Hashable | None = None, rows: int = 1, batchable: bool = True) -> Job[P]:
        """A ``Job`` for a request arriving at ``now_ns`` (class by name, deadline by
        ``deadline_for``), ready for ``submit``."""
        c = self.class_index(priority)
        return Job(payload, c, self.deadline_for(c, now_ns, budget_ns), now_ns, client_id, rows, 0, batchable)

    def submit(self, job: Job[P], now_ns: int) -> Verdict:
        """Admit ``job`` at ``now_ns`` (see the module docstring): QUEUED at ``verdict.rung``,
        ANSWER_NOW (the caller answers at that cheap rung at once) or REJECTED with a
        retry-after.  ``job.rung`` is the best rung it may start at.  May shed a lower-class
        job into ``take_dropped``."""
        if job.queued:
            raise ValueError("job is already queued")
        c = job.level_index
        ctr = self.counters
        ctr.submitted[c] += 1
        self._last_arrival[c] = now_ns
        if now_ns - self._win_start >= _WINDOW_NS:
            self._roll(now_ns)
        if self._closed:
            return self._refuse(job, c, Reason.DRAINING, 0)
        lim = self._limiter
        if lim is not None and job.client_id is not None:
            wait = lim.try_acquire(job.client_id, now_ns)
            if wait:
                ctr.refused[c] += 1
                ctr.rejected[_RATE_LIMITED][c] += 1
                return Verdict(_REJECTED, _RATE_LIMITED, job.rung, wait)
        bl = self._backlog
        if bl.cost_version != self.costs.version:
            bl.maybe_refresh(now_ns, horizon=False)  # admission does not sweep
        r = job.rung
        if bl.cheap[r]:  # the caller asked for a cheap rung: nothing to queue
            ctr.answered_now[c] += 1
            return Verdict(_ANSWER_NOW, None, r, 0)
        queues = bl.queues
        q = queues[c]
        wait = bl.busy_until - now_ns if bl.busy_until > now_ns else 0
        for i in range(c + 1):
            wait += queues[i].work_ns
        ahead = now_ns + int(wait * self._stretch[c])
        if q.count >= q.policy.max_queue_size:
            return self._refuse(job, c, Reason.QUEUE_FULL, ahead - now_ns)
        if job.rows != 1 or not job.batchable:
            own = share = self.costs.expected_ns(r, job.rows)
        else:
            # Its own batch: the partial one at the tail of its rung's queue, plus itself.
            own = self.costs.expected_ns(r, q.per_rung[r] % self._batch + 1)
            share = (bl.per_row if self._above_active(c, now_ns) else bl.per_row_free)[c][r]
        if ahead + own > job.deadline_ns:
            return self._late_at_door(job, ahead, now_ns)
        if bl.total >= self._max_total:
            return self._admit(job, share, self._queued_verdicts[r], ahead, now_ns)
        bl.push(job, q, share)  # the common case, inlined from _admit
        ctr.admitted[c] += 1
        return self._queued_verdicts[r]

    def _late_at_door(self, job: Job[P], ahead: int, now_ns: int) -> Verdict:
        c = job.level_index
        bl = self._backlog
        r0 = job.rung
        seen = self.costs.observations[r0]
        if seen != self._probe_seen[r0]:  # the rung still gets batches: its cost stays current
            self._probe_seen[r0] = seen
            self._probe_at[r0] = now_ns + PROBE_INTERVAL_NS
        elif now_ns >= self._probe_at[r0] and ahead <= job.deadline_ns:
            # Nothing ran at this rung for a probe interval because everything was predicted
            # late there: its learned cost can no longer be corrected by what it keeps out.
            # Admit this one request at the rung to re-measure (the engine's own budget checks
            # still guard it); a fast answer re-seeds the cost (``CostModel.observe(probe=)``).
            self._probe_at[r0] = now_ns + PROBE_INTERVAL_NS
            self._probing[r0] = True
            self._probe_job = job
            self.counters.probes += 1
            share = self.costs.expected_ns(r0, job.rows)
            return self._admit(job, share, self._queued_verdicts[r0], ahead, now_ns)
        if bl.degrade[c]:
            costs = self.costs
            deadline = job.deadline_ns
            solo = job.rows != 1 or not job.batchable
            q = bl.queues[c]
            for r in range(job.rung + 1, self.config.n_rungs):
                if bl.cheap[r]:
                    if now_ns + costs.expected_ns(r, job.rows) <= deadline:
                        self.counters.answered_now[c] += 1
                        self.counters.degraded[_PREDICTED_LATE][c] += 1
                        return Verdict(_ANSWER_NOW, _PREDICTED_LATE, r, 0)
                    continue
                if solo:
                    own = share = costs.expected_ns(r, job.rows)
                else:
                    own = costs.expected_ns(r, q.per_rung[r] % self._batch + 1)
                    share = (bl.per_row if self._above_active(c, now_ns) else bl.per_row_free)[c][r]
                if ahead + own <= deadline:
                    return self._admit(job, share, Verdict(_QUEUED, _PREDICTED_LATE, r, 0), ahead, now_ns)
        return self._refuse(job, c, _PREDICTED_LATE, ahead - now_ns)

    def _admit(self, job: Job[P], share: int, verdict: Verdict, ahead: int, now_ns: int) -> Verdict:
        c = job.level_index
        bl = self._backlog
        # Global bound: a higher-class arrival sheds the newest lowest-class job instead.
        if bl.total >= self._max_total and not bl.make_room(c, now_ns):
            return self._refuse(job, c, Reason.SHED_OVERLOAD, ahead - now_ns)
        job.rung = verdict.rung
        bl.push(job, bl.queues[c], share)
        ctr = self.counters
        ctr.admitted[c] += 1
        if verdict.reason is not None:
            ctr.degraded[verdict.reason][c] += 1
        return verdict

    def _refuse(self, job: Job[P], c: int, reason: Reason, retry_ns: int) -> Verdict:
        self.counters.refused[c] += 1
        self.counters.rejected[reason][c] += 1
        floor = self.config.retry_after_floor_ns
        return Verdict(_REJECTED, reason, job.rung, retry_ns if retry_ns > floor else floor)

    def _above_active(self, c: int, now_ns: int) -> bool:
        """Whether a class above ``c`` had an arrival in the last ``_ACTIVE_NS``: only then
        does the preemption bound keep ``c``'s batches short (with no higher-class traffic,
        batches grow to the full size; the first higher-class arrival after a quiet spell may
        wait behind one such batch)."""
        last = self._last_arrival
        return any(now_ns - last[h] < _ACTIVE_NS for h in range(c))

    def note_ingress(self, n: int, elapsed_ns: int) -> None:
        """The server spent ``elapsed_ns`` outside batches: reading, decoding and admitting
        ``n`` requests, writing replies (``n`` may be 0).  Counted as load above every class;
        the per-request cost is also kept, smoothed, for statistics."""
        self._win_ingress += elapsed_ns
        if n > 0:
            per = elapsed_ns / n
            old = self._ingress_ns
            self._ingress_ns = per if not old else old + 0.125 * (per - old)

    def _roll(self, now_ns: int) -> None:
        """Close a load window: smooth the per-class utilisations and recompute each class's
        wait stretch (1 / the share of time the classes above and all ingress leave it)."""
        span = now_ns - self._win_start
        self._win_start = now_ns
        if span > 4 * _WINDOW_NS:  # idle for a while: the old load says nothing any more
            self._util = [0.0] * len(self._util)
            self._ingress_util = 0.0
        keep = 1.0 - _SMOOTH
        util = self._util
        for c, w in enumerate(self._win_work):
            util[c] = keep * util[c] + _SMOOTH * (w / span)
            self._win_work[c] = 0
        self._ingress_util = keep * self._ingress_util + _SMOOTH * (self._win_ingress / span)
        self._win_ingress = 0.0
        above = self._ingress_util
        for c in range(len(util)):
            free = 1.0 - above
            self._stretch[c] = 1.0 / free if free > _MIN_FREE else 1.0 / _MIN_FREE
            above += util[c]

    # -- dispatch ---------------------------------------------------------------------------
    def next_batch(self, now_ns: int) -> Batch[P] | None:
        """The next batch to run at ``now_ns``, or None: nothing queued, or the batch is
        waiting to grow (``max_queue_delay_ns``; see ``wake_at_ns``).  Jobs found unable to
        make their deadline go to ``take_dropped`` on the way."""
        self._wake = None
        bl = self._backlog
        if not bl.total:
            return None
        if bl.cost_version != self.costs.version:
            bl.maybe_refresh(now_ns)
        start = bl.busy_until if bl.busy_until > now_ns else now_ns
        if bl.heap and bl.heap[0][0] < start + bl.min_cost:
            bl.sweep(now_ns, start)
        costs = self.costs
        limit = self._batch
        while bl.total:
            c, guard = self._choose(now_ns)
            q = bl.queues[c]
            head = q.head()
            assert head is not None
            r = head.rung
            tight = head.deadline_ns
            exp = costs.expected_ns(r, head.rows)
            if start + exp > tight:
                if head is not self._probe_job:
                    bl.late_head(head, q, now_ns, start)
                    continue
                self._probe_job = None  # runs now, at its rung, whatever the stale estimate says
            n = 1
            rows = head.rows
            cap = self._cap_ns[c] if self._above_active(c, now_ns) else math.inf
            if rows == 1 and head.batchable:
                exhausted = True
                it = iter(q.deques[r])
                next(it)  # the head itself
                for j in it:
                    if not j.queued:
                        continue
                    if n >= limit or j.rows != 1 or not j.batchable:
                        exhausted = False
                        break
                    d = j.deadline_ns if j.deadline_ns < tight else tight
                    e = costs.expected_ns(r, n + 1)
                    # The preemption bound is a goal for the typical batch (its mean), the
                    # deadline a promise (the expectation, with its safety margin).
                    if start + e > d or (cap < e and costs.mean_ns(r, n + 1) > cap):
                        exhausted = False
                        break
                    tight, exp, n = d, e, n + 1
                delay = self.config.max_queue_delay_ns
                if exhausted and delay and n < limit and not guard:
                    # Wait for the batch to grow, but not past the last moment a batch of
                    # n + 1 could still start and meet the tightest deadline.
                    wake = head.arrival_ns + delay
                    latest = tight - costs.expected_ns(r, n + 1)
                    if latest < wake:
                        wake = latest
                    if wake > now_ns:
                        self._wake = wake
                        return None
                rows = n
            jobs = q.take(r, n)
            bl.total -= n
            ctr = self.counters
            ctr.batches += 1
            ctr.batched[c] += n
            ctr.batch_sizes[min((n - 1).bit_length(), len(ctr.batch_sizes) - 1)] += 1
            if guard:
                ctr.guard_activations += 1
                self._last_guard = now_ns
            bl.busy_until = start + exp
            self._in_flight += 1
            self._flight.append(c)
            return Batch(jobs, r, tight, c, rows, start, exp)
        return None

    def _choose(self, now_ns: int) -> tuple[int, bool]:
        """The class to serve (and whether by the guard): the highest with jobs, unless a lower
        one's head waited over the starvation guard and no guard batch was handed out in the
        last guard interval (so a higher class waits behind at most one per interval)."""
        queues = self._backlog.queues
        top = 0
        while not queues[top].count:
            top += 1
        g = self.config.starvation_guard_ns
        if g and now_ns - self._last_guard >= g:
            for c in range(top + 1, len(queues)):
                h = queues[c].head()
                if h is not None and now_ns - h.arrival_ns > g:
                    return c, True
        return top, False

    def wake_at_ns(self) -> int | None:
        """When to call ``next_batch`` (or ``expire``) next if nothing else happens: the end
        of a batch's wait to grow, or the next queued deadline's expiry, reckoned as if no
        batch were in flight (None when nothing is queued; may be in the past: call now).
        Also call ``next_batch`` after every ``submit`` that queued while the dispatcher idles."""
        bl = self._backlog
        if not bl.total:
            return None
        if bl.cost_version != self.costs.version:
            bl.refresh()
        w = self._wake
        e = bl.next_expiry_ns()
        if e is not None and (w is None or e < w):
            w = e
        return w

    def observe(self, rung: int, n: int, elapsed_ns: int | None) -> None:
        """Report a batch handed out by ``next_batch`` as finished: ``n`` rows at ``rung`` took
        ``elapsed_ns`` (measured by the dispatcher; None when it was not run — every client
        left — so there is no time to learn from).  Call once per batch."""
        if self._flight:
            c = self._flight.popleft()
            if elapsed_ns is not None:
                # Load is measured, not predicted: a class with sparse traffic runs small
                # batches that cost far more per row than a full one.
                self._win_work[c] += elapsed_ns
        if elapsed_ns is not None:
            probe = self._probing[rung]
            if probe:
                self._probing[rung] = False
            self.costs.observe(rung, n, elapsed_ns, probe=probe)
        if self._in_flight:
            self._in_flight -= 1
        if not self._in_flight:
            self._backlog.busy_until = 0  # idle: predictions start from "now" again

    # -- leaving the queue otherwise --------------------------------------------------------
    def expire(self, now_ns: int) -> list[tuple[Job[P], Verdict]]:
        """Hand back every queued job that can no longer make its deadline at any model rung
        (ANSWER_NOW at a cheap rung per class policy, else REJECTED(EXPIRED)), together with
        anything else in the outbox (this empties it, like ``take_dropped``)."""
        bl = self._backlog
        if bl.total:
            if bl.cost_version != self.costs.version:
                bl.maybe_refresh(now_ns)
            start = bl.busy_until if bl.busy_until > now_ns else now_ns
            if bl.heap and bl.heap[0][0] < start + bl.min_cost:
                bl.sweep(now_ns, start)
        return self.take_dropped()

    def take_dropped(self) -> list[tuple[Job[P], Verdict]]:
        """Jobs handed back outside batches since the last call (expired, degraded to a cheap
        rung while queued, shed), each with its verdict; the caller answers them."""
        bl = self._backlog
        if not bl.dropped:
            return []
        out, bl.dropped = bl.dropped, []
        return out

    @property
    def has_dropped(self) -> bool:
        """Whether ``take_dropped`` would return anything."""
        return bool(self._backlog.dropped)

    def cancel(self, job: Job[P]) -> bool:
        """Take a queued ``job`` out (e.g. its client went away): True if it was queued (the
        caller owns it again), False if it already left the queue."""
        return self._backlog.cancel(job)

    def shed(self, count: int, now_ns: int) -> int:
        """Shed up to ``count`` queued jobs, the newest of the lowest class first, into
        ``take_dropped`` as REJECTED(SHED_OVERLOAD); returns how many were shed."""
        done = 0
        while done < count and self._backlog.make_room(-1, now_ns):
            done += 1
        return done

    def close(self) -> None:
        """Stop admitting (new requests get REJECTED(DRAINING)); queued jobs are still served."""
        self._closed = True

    def drain(self) -> list[Job[P]]:
        """Close, and remove and return every queued job (shutdown), by class then age."""
        self._closed = True
        self._wake = None
        return self._backlog.drain()

    # -- state ------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether the scheduler stopped admitting (``close`` or ``drain``)."""
        return self._closed

    @property
    def total_queued(self) -> int:
        """Jobs queued over all classes."""
        return self._backlog.total

    def depth(self, class_index: int) -> int:
        """Jobs queued in class ``class_index``."""
        return self._backlog.queues[class_index].count

    def statistics(self) -> dict[str, Any]:
        """Queue depths and queued work per class, flow counters per class, rejects / degrades
        / sheds by reason and class, batches, batch-size histogram, starvation-guard
        activations, and the rate limiter's counts (see ``Counters``)."""
        bl = self._backlog
        out = self.counters.snapshot(self.names, [q.count for q in bl.queues], [q.work_ns for q in bl.queues])
        out["in_flight"] = self._in_flight
        out["busy_until_ns"] = bl.busy_until
        out["closed"] = self._closed
        out["door"] = {
            "ingress_us": round(self._ingress_ns / 1e3, 2),
            "ingress_utilization": round(self._ingress_util, 4),
            "utilization": dict(zip(self.names, (round(u, 4) for u in self._util), strict=True)),
            "wait_stretch": dict(zip(self.names, (round(x, 3) for x in self._stretch), strict=True)),
            "per_row_us": {n: [round(x / 1e3, 2) for x in row]
                           for n, row in zip(self.names, bl.per_row, strict=True)},
        }
        if self._limiter is not None:
            out["rate_limit"] = self._limiter.statistics()
        return out
