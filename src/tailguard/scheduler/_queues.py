"""The queue of one priority class: a FIFO deque per rung plus running aggregates.

A class keeps one deque per ladder rung so that a batch (one class, one rung) is taken from
the left of one deque in O(batch), and the class's head is the oldest of the rung heads.
Removal from the middle (cancel, expiry) is lazy: the job is marked not ``queued`` and
taken out of the aggregates at once, and its dead entry is dropped when it reaches either
end of its deque.  The aggregates (live ``count``, live jobs ``per_rung``, queued expected
work ``work_ns``) are maintained on every push and removal, so admission reads them in O(1)
instead of summing the queue.  Bounds are enforced by the scheduler, not here.  One owner
thread; times are integer ns.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

from tailguard.scheduler.job import Job
from tailguard.scheduler.policy import ClassPolicy

__all__ = ["ClassQueue"]

P = TypeVar("P")


class ClassQueue(Generic[P]):
    """The jobs of one class waiting for a batch (see the module docstring).  ``work_ns`` is
    the sum of the queued jobs' ``cost_ns``: each job's share of the expected batch time."""

    __slots__ = ("count", "deques", "index", "per_rung", "policy", "work_ns")

    def __init__(self, policy: ClassPolicy, index: int, n_rungs: int) -> None:
        self.policy = policy
        self.index = index
        self.deques: list[deque[Job[P]]] = [deque() for _ in range(n_rungs)]
        self.per_rung = [0] * n_rungs
        self.count = 0
        self.work_ns = 0

    def push(self, job: Job[P], cost_ns: int) -> None:
        """Queue ``job`` at the tail of its rung's deque, its share of the work ``cost_ns``."""
        job.queued = True
        job.cost_ns = cost_ns
        self.deques[job.rung].append(job)
        self.per_rung[job.rung] += 1
        self.count += 1
        self.work_ns += cost_ns

    def push_front(self, job: Job[P], cost_ns: int) -> None:
        """Queue ``job`` at the head of its rung's deque (a head job moved to a cheaper rung
        keeps its place in line)."""
        job.queued = True
        job.cost_ns = cost_ns
        self.deques[job.rung].appendleft(job)
        self.per_rung[job.rung] += 1
        self.count += 1
        self.work_ns += cost_ns

    def forget(self, job: Job[P]) -> None:
        """Take a live ``job`` out of the aggregates; its deque entry dies in place (lazy)."""
        job.queued = False
        self.per_rung[job.rung] -= 1
        self.count -= 1
        self.work_ns -= job.cost_ns

    def head(self) -> Job[P] | None:
        """The oldest live job over the rung deques (None when empty); it is at the left of
        ``deques[job.rung]`` (dead entries in front of the heads are dropped)."""
        if not self.count:
            return None
        best: Job[P] | None = None
        for dq in self.deques:
            while dq and not dq[0].queued:
                dq.popleft()
            if dq and (best is None or dq[0].arrival_ns < best.arrival_ns):
                best = dq[0]
        return best

    def pop_head(self, job: Job[P]) -> None:
        """Remove ``job``, which ``head`` just returned, from the front of its deque."""
        popped = self.deques[job.rung].popleft()
        assert popped is job
        self.forget(job)

    def pop_newest(self) -> Job[P] | None:
        """Remove and return the newest live job (None when empty)."""
        if not self.count:
            return None
        best: deque[Job[P]] | None = None
        for dq in self.deques:
            while dq and not dq[-1].queued:
                dq.pop()
            if dq and (best is None or dq[-1].arrival_ns >= best[-1].arrival_ns):
                best = dq
        assert best is not None
        job = best.pop()
        self.forget(job)
        return job

    def take(self, rung: int, n: int) -> list[Job[P]]:
        """Remove and return the first ``n`` live jobs of ``rung``'s deque, in order."""
        dq = self.deques[rung]
        jobs: list[Job[P]] = []
        work = 0
        while len(jobs) < n:
            job = dq.popleft()
            if job.queued:
                job.queued = False
                work += job.cost_ns
                jobs.append(job)
        self.per_rung[rung] -= n
        self.count -= n
        self.work_ns -= work
        return jobs

    def drain(self) -> list[Job[P]]:
        """Remove and return every live job, oldest first."""
        jobs = [j for dq in self.deques for j in dq if j.queued]
        jobs.sort(key=lambda j: j.arrival_ns)
        for j in jobs:
            j.queued = False
        for dq in self.deques:
            dq.clear()
        self.per_rung = [0] * len(self.deques)
        self.count = 0
        self.work_ns = 0
        return jobs

    def __len__(self) -> int:
        return self.count
