"""Deadline-aware scheduling: priority classes, admission, batching, shedding, rate limits.

Pure logic, transport- and engine-agnostic, owned by one thread (the server's event loop):
every time is an argument or comes from an injected clock, nothing sleeps or locks.  The
server builds a ``SchedulerConfig`` from the service spec and a ``CostModel`` seeded with the
engine's estimates, submits each request as a ``Job`` and runs the ``Batch``es that
``Scheduler.next_batch`` hands out; see ``tailguard.scheduler.scheduler`` for the contract.
"""

from tailguard.scheduler.costs import CostModel, Prior
from tailguard.scheduler.job import Admit, Batch, Job, Verdict
from tailguard.scheduler.policy import ClassPolicy, OnTimeout, RateLimit, Reason, SchedulerConfig
from tailguard.scheduler.ratelimit import ClientLimiter, TokenBucket
from tailguard.scheduler.scheduler import Scheduler

__all__ = [
    "Admit",
    "Batch",
    "ClassPolicy",
    "ClientLimiter",
    "CostModel",
    "Job",
    "OnTimeout",
    "Prior",
    "RateLimit",
    "Reason",
    "Scheduler",
    "SchedulerConfig",
    "TokenBucket",
    "Verdict",
]
