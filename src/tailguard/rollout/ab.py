"""A/B exposure records: who saw which arm, which version answered, when.

An exposure is recorded on the reply path for every decision made during an A/B stage — a
tuple appended to a bounded deque (the last ``capacity`` are kept; ``total`` counts all) —
and turned into ``Exposure`` structs only when read (``records()``), on the side path or by
an exporter.  Outcomes go to ``stats.MSPRT`` through ``Rollout.record_outcome``.

Owner: the engine's owner thread.
"""

from __future__ import annotations

import collections
from typing import Any

import msgspec

__all__ = ["Exposure", "ExposureLog"]


class Exposure(msgspec.Struct, frozen=True, kw_only=True):
    """One A/B exposure: the routing key, its arm (``"A"`` stable, ``"B"`` candidate), the model
    version that answered and when (engine clock, ns)."""

    key: Any
    arm: str
    model_version: str
    at_ns: int


class ExposureLog:
    """The last ``capacity`` exposures (reply path: one tuple append, one increment)."""

    def __init__(self, capacity: int = 65536) -> None:
        self._items: collections.deque[tuple[Any, str, str, int]] = collections.deque(maxlen=capacity)
        self.total = 0

    def append(self, key: Any, arm: str, model_version: str, at_ns: int) -> None:
        """Record one exposure (the oldest kept one is let go when full)."""
        self._items.append((key, arm, model_version, at_ns))
        self.total += 1

    def __len__(self) -> int:
        return len(self._items)

    def records(self) -> list[Exposure]:
        """The kept exposures, oldest first."""
        return [Exposure(key=k, arm=a, model_version=v, at_ns=t) for k, a, v, t in self._items]
