"""The embedded in-memory store behind the ``OnlineStore`` protocol (the default backend).

``MemoryOnlineStore`` reads ``InMemoryOnlineStore``'s arrays into a ``Rows`` exactly as the
Redis store does: the same values, ages, and ``MISSING``/``EXPIRED`` flags, so a caller
written against the protocol moves between the embedded and the shared store unchanged.
The in-memory store holds one version per view (the one it was built with): a view set that
pins another version reads ``MISSING`` defaults, as Redis does for a version never written.

Ages are measured on the store's monotonic clock (one process: no wall-clock skew).
Ownership as ``InMemoryOnlineStore``: one thread writes and reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from tailguard.clock import Clock, MonotonicClock
from tailguard.features.online.protocol import NO_AGE, Rows, ValueFlag, ViewSet
from tailguard.features.store import NEVER, InMemoryOnlineStore
from tailguard.features.view import FeatureView
from tailguard.spec import EntitySpec

__all__ = ["MemoryOnlineStore"]

_MISSING = int(ValueFlag.MISSING)
_EXPIRED = int(ValueFlag.EXPIRED)


class MemoryOnlineStore:
    """``OnlineStore`` over an ``InMemoryOnlineStore`` (given, or built from the views)."""

    def __init__(
        self,
        views: Mapping[str, FeatureView],
        entities: Iterable[EntitySpec],
        *,
        clock: Clock | None = None,
        capacity: int = 1024,
        store: InMemoryOnlineStore | None = None,
    ) -> None:
        self._clock: Clock = clock or MonotonicClock()
        self.store = store or InMemoryOnlineStore(views, entities, clock=self._clock, capacity=capacity)
        self._versions = {n: v.version for n, v in views.items() if not v.is_request}
        self.reads = 0

    def read(self, views: ViewSet, key: Any, out: Rows | None = None) -> Rows:
        """One entity's values of ``views`` (a row gather per view)."""
        return self.read_many(views, [key], out)

    def read_many(self, views: ViewSet, keys: Sequence[Any], out: Rows | None = None) -> Rows:
        """``len(keys)`` entities' values of ``views``."""
        n = len(keys)
        rows = out if out is not None else Rows.for_views(views, max(n, 1))
        rows.reset(n)
        self.reads += 1
        if not n:
            return rows
        idx = self.store.rows(views.entity, keys)
        now = self._clock.now_ns()
        for j, ref in enumerate(views.views):
            lo, hi = ref.lo, ref.hi
            if self._versions.get(ref.name) != ref.version:
                rows.values[:n, lo:hi] = ref.default
                rows.ages_ns[:n, j] = NO_AGE
                rows.flags[:n, j] |= _MISSING
                continue
            t = self.store.table(ref.name)
            written = t.written_ns[idx]
            never = written == NEVER
            ages = np.where(never, NO_AGE, now - written)
            rows.values[:n, lo:hi] = t.f32[idx]
            rows.ages_ns[:n, j] = ages
            rows.flags[:n, j] |= np.where(never, _MISSING, 0).astype(np.uint8)
            if ref.ttl_ns is not None:
                old = ~never & (ages > ref.ttl_ns)
                if old.any():
                    rows.values[:n, lo:hi][old] = ref.default
                    rows.flags[:n, j] |= np.where(old, _EXPIRED, 0).astype(np.uint8)
        return rows

    def write(
        self, view: str, key: Any, values: Sequence[float] | np.ndarray, event_ns: int | None = None
    ) -> None:
        """Write one entity's fields of ``view`` (declared order)."""
        self.store.write(view, key, values, event_ns)

    def write_many(
        self, view: str, keys: Sequence[Any], values: np.ndarray, event_ns: np.ndarray | None = None
    ) -> None:
        """Write many entities' rows of ``view``; ``values`` has shape (n, n_fields)."""
        self.store.write_many(view, keys, values, event_ns)

    def statistics(self) -> dict[str, Any]:
        """The in-memory store's counters plus reads."""
        return {**self.store.statistics(), "reads": self.reads}

    def close(self) -> None:
        """Nothing to release (the arrays go with the object)."""
