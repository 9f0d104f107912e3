"""Delayed labels: find the prediction a late-arriving label belongs to.

A label is matched to a decision by **entity key + decision time**.  The monitor remembers,
for each key, the predictions it made (decision time on the engine's clock, value of the
monitored output), oldest first, up to ``capacity`` predictions over all keys (the least
recently decided keys lose their oldest predictions first).  A label then names its key and
either

* nothing more: it labels the key's *oldest* unlabelled prediction (labels arrive in
  decision order, one per decision), or
* ``decided_ns``: it labels the key's newest prediction made at or before that time (a label
  about "the decision in force at time t").

Each prediction is labelled at most once.  A multi-entity key (``{entity: key}``) is held as
``tuple(sorted(mapping.items()))``; ``observe_label`` accepts the mapping and converts it the
same way (``row_keys``/``key_of``).

Owner: the side path's thread.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["PendingPredictions", "key_of", "row_keys"]


def key_of(key: Any) -> Hashable:
    """The hashable form of one decision's key (a mapping becomes a sorted tuple of items)."""
    if isinstance(key, Mapping):
        return tuple(sorted(key.items()))
    if isinstance(key, np.generic):
        return key.item()  # type: ignore[no-any-return]
    return key  # type: ignore[no-any-return]


def row_keys(keys: Any, n: int) -> list[Hashable]:
    """Per-row hashable keys of a batch decision's ``keys`` (``n`` rows)."""
    if isinstance(keys, Mapping):
        cols = []
        for e in sorted(keys):
            k = keys[e]
            if isinstance(k, Sequence | np.ndarray) and not isinstance(k, str | bytes):
                cols.append([(e, v) for v in (k.tolist() if isinstance(k, np.ndarray) else k)])
            else:
                cols.append([(e, k)] * n)
        return [tuple(items) for items in zip(*cols, strict=True)]
    if isinstance(keys, np.ndarray):
        return list(keys.tolist())
    return list(keys)


class PendingPredictions:
    """Predictions waiting for their label, per key, bounded to ``capacity`` in total."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._by_key: OrderedDict[Hashable, deque[tuple[int, float]]] = OrderedDict()
        self.size = 0
        self.evicted = 0

    def add(self, key: Hashable, decided_ns: int, value: float) -> None:
        """Remember one prediction (evicting the oldest of the stalest key when full)."""
        q = self._by_key.get(key)
        if q is None:
            q = self._by_key[key] = deque()
        else:
            self._by_key.move_to_end(key)
        q.append((decided_ns, value))
        self.size += 1
        while self.size > self.capacity:
            old_key, old = next(iter(self._by_key.items()))
            old.popleft()
            self.size -= 1
            self.evicted += 1
            if not old:
                del self._by_key[old_key]

    def take(self, key: Hashable, decided_ns: int | None = None) -> float | None:
        """The prediction a label for ``key`` belongs to (removed), or None if none is held."""
        q = self._by_key.get(key)
        if not q:
            return None
        if decided_ns is None:
            _, value = q.popleft()
        else:
            i = len(q) - 1
            while i >= 0 and q[i][0] > decided_ns:
                i -= 1
            if i < 0:
                return None
            value = q[i][1]
            del q[i]
        self.size -= 1
        if not q:
            del self._by_key[key]
        return value
