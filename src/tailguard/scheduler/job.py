"""What the scheduler hands around: jobs, batches and admission verdicts.

A ``Job`` wraps one request: the server's opaque ``payload`` plus what scheduling needs
(class, deadline, arrival, client, rows, rung).  The scheduler owns a job from a ``QUEUED``
verdict until it hands it back exactly once: in a ``Batch``, as a ``(job, Verdict)`` pair
from ``take_dropped``/``expire``, from ``drain``, or to ``cancel``'s True.  Times are integer
monotonic nanoseconds; one owner thread.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from typing import Generic, NamedTuple, TypeVar

from tailguard.scheduler.policy import Reason

__all__ = ["Admit", "Batch", "Job", "Verdict"]

P = TypeVar("P")


class Admit(enum.Enum):
    """What happened to a job: queued for a batch, to be answered now at a cheap rung by the
    caller, or refused."""

    QUEUED = "queued"
    ANSWER_NOW = "answer_now"
    REJECTED = "rejected"


class Verdict(NamedTuple):
    """The scheduler's word on a job.  ``reason`` says why it left the normal path (None when
    it did not); ``rung`` is the rung to answer at (``ANSWER_NOW``) or queued at (``QUEUED``);
    ``retry_after_ns`` is a hint for ``REJECTED`` (0 otherwise)."""

    kind: Admit
    reason: Reason | None
    rung: int
    retry_after_ns: int


class Job(Generic[P]):
    """One request as the scheduler sees it.

    ``level_index`` indexes the classes in level order (0 = highest priority);
    ``deadline_ns``/``arrival_ns`` are absolute monotonic ns; ``client_id`` keys the rate
    limit (None: not limited); ``rows >= 1`` (a job of several rows, or one not
    ``batchable``, always runs alone); ``rung`` is the lowest-numbered (best) rung it may
    start at: admission and expiry only ever raise it.  ``queued`` and ``cost_ns`` belong to
    the scheduler (live in a queue; its share of the queued work).
    """

    __slots__ = ("arrival_ns", "batchable", "client_id", "cost_ns", "deadline_ns", "level_index",
                 "payload", "queued", "rows", "rung")

    def __init__(self, payload: P, level_index: int, deadline_ns: int, arrival_ns: int,
                 client_id: Hashable | None = None, rows: int = 1, rung: int = 0,
                 batchable: bool = True) -> None:
        if rows < 1:
            raise ValueError("a job has at least one row")
        self.payload = payload
        self.level_index = level_index
        self.deadline_ns = deadline_ns
        self.arrival_ns = arrival_ns
        self.client_id = client_id
        self.rows = rows
        self.rung = rung
        self.batchable = batchable
        self.queued = False
        self.cost_ns = 0

    @property
    def solo(self) -> bool:
        """Whether this job runs alone (several rows, or not batchable)."""
        return self.rows != 1 or not self.batchable

    def __repr__(self) -> str:
        return (f"Job(level_index={self.level_index}, rung={self.rung}, rows={self.rows}, "
                f"arrival_ns={self.arrival_ns}, deadline_ns={self.deadline_ns}, queued={self.queued})")


class Batch(Generic[P]):
    """Jobs of one class, to be run together at one rung.

    ``jobs`` are in FIFO order; ``rows`` is their total; ``deadline_ns`` is the tightest of
    their deadlines; ``start_ns`` is when the scheduler expects it to start (the hand-out
    time, or the predicted end of the batch still running) and ``expected_ns`` its expected
    service time, so ``start_ns + expected_ns <= deadline_ns`` held when it was formed (unless
    the costs were unknown).  The dispatcher runs it, then reports the measured time with
    ``Scheduler.observe(batch.rung, batch.rows, elapsed_ns)``.
    """

    __slots__ = ("class_index", "deadline_ns", "expected_ns", "jobs", "rows", "rung", "start_ns")

    def __init__(self, jobs: list[Job[P]], rung: int, deadline_ns: int, class_index: int,
                 rows: int, start_ns: int, expected_ns: int) -> None:
        self.jobs = jobs
        self.rung = rung
        self.deadline_ns = deadline_ns
        self.class_index = class_index
        self.rows = rows
        self.start_ns = start_ns
        self.expected_ns = expected_ns

    @property
    def expected_finish_ns(self) -> int:
        """When the batch is expected to finish (absolute ns)."""
        return self.start_ns + self.expected_ns

    def __len__(self) -> int:
        return len(self.jobs)

    def __repr__(self) -> str:
        return (f"Batch(class_index={self.class_index}, rung={self.rung}, jobs={len(self.jobs)}, "
                f"rows={self.rows}, deadline_ns={self.deadline_ns})")
