"""A Redis online store behind a per-process near-cache: the store a serving replica reads.

A read serves each entity from the near-cache when it may, and fetches the rest from Redis in
one round trip (the cached entities cost no I/O).  Which cached values may be served:

* while the invalidation link is up (``NearCache.proven``): every cached value fetched within
  the entry TTL, flagged ``CACHED`` — any write since it was fetched would have removed it;
* otherwise, only values of ``eventual`` views whose entity was last known fresh at most
  ``max_staleness_s`` ago, flagged ``CACHED | UNCONFIRMED``; ``strict`` views go to Redis.

When Redis cannot be read in time, the entities that the cache could not serve make the read
raise ``FeatureStoreUnavailable`` naming their views (the ladder takes it): a strict view is
never served unproven, an eventual view never beyond its bound.  Redis coming back needs no
restart: the read connection reconnects on the next call, the listener reconnects with
backoff and, having possibly missed invalidations, clears the cache when it resubscribes.

Every value carries its age (now minus its write time), cached or not, so a decision records
how old each feature it used was.  A process's own writes invalidate its cache at once.

``front.CacheFront`` holds the logic without I/O and ``front.NearCachedBase`` what the two
near-cached stores share; ``NearCachedStore`` (blocking) and ``AsyncNearCachedStore``
(asyncio, in ``asyncstore``) only add the fetch.  Reads run on one owner thread (or loop);
the listener runs on its own thread (see ``nearcache``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tailguard.features.online.errors import FeatureStoreUnavailable
from tailguard.features.online.front import CacheFront, NearCachedBase
from tailguard.features.online.protocol import Rows, ViewSet
from tailguard.features.online.redis import RedisOnlineStore
from tailguard.features.view import FeatureView

__all__ = ["CacheFront", "NearCachedStore"]


class NearCachedStore(NearCachedBase[RedisOnlineStore]):
    """``OnlineStore``: a ``RedisOnlineStore`` behind a near-cache and an invalidation link.

    ``NearCachedStore(store, *, capacity=100_000, mode=TRACKING, clock=None, heartbeat_s=0.5,
    entry_ttl_s=60.0, start=True)``: ``capacity`` bounds the cache in entities; ``mode`` picks
    the invalidation mechanism (``TRACKING`` by default; ``PUBSUB`` needs writers that publish,
    which ``RedisOnlineStore`` does unless told not to); ``entry_ttl_s`` bounds how long an
    entry is trusted on pushes alone (see ``nearcache``).  ``start=False`` leaves the listener
    to the caller (tests pump it).
    """

    def read(self, views: ViewSet, key: Any, out: Rows | None = None) -> Rows:
        """One entity: from the cache when it may serve it, else one ``HMGET``."""
        rows, hk, served = self.begin_read(views, key, out)
        if served:
            return rows
        return self._fetch(views, [hk], [0], rows, self.cache.epoch, self._clock.now_ns())

    def read_many(self, views: ViewSet, keys: Sequence[Any], out: Rows | None = None) -> Rows:
        """Many entities: cached ones from memory, the rest in one pipelined round trip."""
        rows, hkeys, miss, epoch, now = self.begin_read_many(views, keys, out)
        if not miss:
            return rows
        return self._fetch(views, hkeys, miss, rows, epoch, now)

    def _fetch(
        self, views: ViewSet, hkeys: list[bytes], miss: list[int], rows: Rows, epoch: int, now: int
    ) -> Rows:
        try:
            replies = self.store.fetch_values(views, self.to_fetch(hkeys, miss))
        except FeatureStoreUnavailable as exc:
            raise self.front.fail(views, exc) from exc
        self.front.complete(views, hkeys, miss, replies, rows, epoch, now)
        return rows

    def write(
        self,
        view: str | FeatureView,
        key: Any,
        values: Sequence[float] | np.ndarray,
        event_ns: int | None = None,
    ) -> None:
        """Write through to Redis, then drop the entity from this process's cache."""
        self.write_many(view, [key], np.asarray(values, dtype=np.float32).reshape(1, -1), event_ns)

    def write_many(
        self,
        view: str | FeatureView,
        keys: Sequence[Any],
        values: np.ndarray,
        event_ns: np.ndarray | int | None = None,
    ) -> None:
        """Write many rows through to Redis, then drop those entities from this process's cache."""
        self.store.write_many(view, keys, values, event_ns)
        self.written(view, keys)

    def close(self) -> None:
        """Stop the listener and close the store (idempotent)."""
        self.listener.close()
        self.store.close()
