"""What the engine returns: decisions, their flags, and the stage vocabulary.

``Decision`` answers one entity, ``BatchDecision`` many.  Both carry the outputs, the model
version that produced them (empty for non-model rungs), the ladder rung that answered, flags
(unknown entity, stale feature, fallback, missed deadline, features unavailable...) and
per-stage timings in integer nanoseconds, in ``STAGES`` order.  Both are ``gc=False``
structs: they hold no reference cycles, so creating one per request does not feed the cyclic
garbage collector.  They are
not frozen only so the engine can stamp the delivery timing after construction; treat them
as read-only (side-path hooks share the same object).
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec
import numpy as np

__all__ = ["STAGES", "BatchDecision", "Decision", "Flag"]

#: Stage names, in the order of ``timings_ns`` (the last is end to end).
STAGES = ("ingest", "features", "inference", "delivery", "total")


class Flag(enum.IntFlag):
    """Why a decision is not a plain primary-model answer (bits, combinable)."""

    NONE = 0
    UNKNOWN_ENTITY = 1  # an entity key the store has never seen: declared defaults served
    STALE_FEATURE = 2  # a view older than its TTL, or never written for this entity: defaults
    FALLBACK = 4  # answered by a rung below the first
    DEADLINE_MISSED = 8  # the reply was formed after the request's deadline
    MODEL_FAILED = 16  # a model rung raised or produced non-finite outputs
    DEGRADED = 32  # the scheduler started the request below the first rung (predicted late)
    #: The shared online store could not be read in time and no cached value could stand in
    #: (a strict view not provably fresh, an eventual one past its staleness bound): the model
    #: rungs were skipped and a last_good or default rung answered.
    FEATURES_UNAVAILABLE = 64
    #: A value of an ``eventual`` view was served from the near-cache without proof that it is
    #: fresh (the invalidation link was down), within the view's ``max_staleness``.
    UNCONFIRMED_FEATURE = 128


class Decision(msgspec.Struct, gc=False):
    """One entity's decision.  ``outputs`` is a float64 vector named by ``output_names``."""

    key: Any
    outputs: np.ndarray
    output_names: tuple[str, ...]
    model_version: str
    rung: str
    rung_index: int
    flags: int
    priority: str
    #: ingest, features, inference, delivery, total — integer nanoseconds.
    timings_ns: tuple[int, int, int, int, int]

    def output(self, name: str) -> float:
        """One output by name."""
        return float(self.outputs[self.output_names.index(name)])

    @property
    def flag(self) -> Flag:
        """The flag bits as a ``Flag``."""
        return Flag(self.flags)


class BatchDecision(msgspec.Struct, gc=False):
    """Decisions for N entities scored together.  Row ``i`` answers ``keys[i]``.

    ``rungs[i]`` indexes ``rung_names``: rows may differ (a row without a last good answer
    falls to the default).  ``model_version`` names the model rung used, if any.
    """

    keys: Any
    outputs: np.ndarray
    output_names: tuple[str, ...]
    model_version: str
    rung_names: tuple[str, ...]
    rungs: np.ndarray
    flags: np.ndarray
    priority: str
    timings_ns: tuple[int, int, int, int, int]

    def __len__(self) -> int:
        return int(self.outputs.shape[0])
