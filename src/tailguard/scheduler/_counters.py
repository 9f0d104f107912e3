"""The scheduler's counters: plain int lists bumped on the hot path, labelled on export.

Every job is counted once at the door (``submitted`` = ``admitted`` + ``answered_now`` +
``refused``) and, if admitted, once when it leaves the queue (``admitted`` = ``batched`` +
``expired`` + ``shed`` + ``cancelled`` + ``drained`` + queued now).  Orthogonally, every
reject, degrade and shed is counted by ``(Reason, class)``: ``degraded`` counts a degrade
event (at the door or in the queue), whatever became of the job afterwards.  Per-request
work is an index and an increment; ``snapshot`` builds the labelled dicts.  One owner thread.
"""

from __future__ import annotations

from typing import Any

from tailguard.models.runtime import ServiceTime
from tailguard.scheduler.policy import Reason

__all__ = ["Counters"]


class Counters:
    """Per-class flow counts, ``(Reason, class)`` event counts and batch statistics."""

    __slots__ = ("admitted", "answered_now", "batch_sizes", "batched", "batches", "cancelled",
                 "degraded", "drained", "expired", "guard_activations", "probes", "refused", "rejected",
                 "shed", "shed_by", "submitted")

    def __init__(self, n_classes: int) -> None:
        z = [0] * n_classes
        # Door outcomes (each submitted job exactly one).
        self.submitted = list(z)
        self.admitted = list(z)
        self.answered_now = list(z)
        self.refused = list(z)
        # Queue exits (each admitted job exactly one, or still queued).
        self.batched = list(z)
        self.expired = list(z)
        self.shed = list(z)
        self.cancelled = list(z)
        self.drained = list(z)
        # Events by reason: list indexed by class.
        self.rejected: dict[Reason, list[int]] = {r: list(z) for r in Reason}
        self.degraded: dict[Reason, list[int]] = {r: list(z) for r in Reason}
        self.shed_by: dict[Reason, list[int]] = {r: list(z) for r in Reason}
        self.batches = 0
        self.batch_sizes = [0] * ServiceTime.BUCKETS  # jobs per batch, power-of-two buckets
        self.guard_activations = 0
        #: Requests admitted at a rung although predicted late there, to re-measure its cost.
        self.probes = 0

    def snapshot(self, names: tuple[str, ...], depths: list[int], work_ns: list[int]) -> dict[str, Any]:
        """The counters as plain dicts keyed by class name and reason label (non-zero only
        for the labelled ones); ``depths``/``work_ns`` are the live queue aggregates."""

        def per_class(v: list[int]) -> dict[str, int]:
            return dict(zip(names, v, strict=True))

        def labelled(d: dict[Reason, list[int]]) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for reason, v in d.items():
                nz = {n: x for n, x in zip(names, v, strict=True) if x}
                if nz:
                    out[reason.value] = nz
            return out

        return {
            "queued": per_class(depths),
            "queued_total": sum(depths),
            "queued_work_ns": per_class(work_ns),
            "submitted": per_class(self.submitted),
            "admitted": per_class(self.admitted),
            "answered_now": per_class(self.answered_now),
            "refused": per_class(self.refused),
            "batched": per_class(self.batched),
            "expired": per_class(self.expired),
            "shed_jobs": per_class(self.shed),
            "cancelled": per_class(self.cancelled),
            "drained": per_class(self.drained),
            "rejected": labelled(self.rejected),
            "degraded": labelled(self.degraded),
            "shed": labelled(self.shed_by),
            "batches": self.batches,
            "cost_probes": self.probes,
            "batch_sizes": {1 << b: n for b, n in enumerate(self.batch_sizes) if n},
            "starvation_guard": self.guard_activations,
        }
