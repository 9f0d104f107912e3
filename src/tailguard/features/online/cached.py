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

``CacheFront`` holds the logic without I/O; ``NearCachedStore`` (blocking) and
``AsyncNearCachedStore`` (asyncio, in ``asyncstore``) only add the fetch.  Reads run on one
owner thread (or loop); the listener runs on its own thread (see ``nearcache``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tailguard.clock import Clock, MonotonicClock
from tailguard.features.online.errors import FeatureStoreUnavailable
from tailguard.features.online.invalidation import InvalidationListener, InvalidationMode
from tailguard.features.online.nearcache import CacheEntry, NearCache, Value
from tailguard.features.online.protocol import NO_AGE, Rows, ValueFlag, ViewSet
from tailguard.features.online.redis import RedisOnlineStore, StoreCore
from tailguard.features.view import FeatureView

__all__ = ["CacheFront", "NearCachedStore"]

_CACHED = int(ValueFlag.CACHED)
_UNCONFIRMED = int(ValueFlag.UNCONFIRMED)
_MISSING = int(ValueFlag.MISSING)
_EXPIRED = int(ValueFlag.EXPIRED)
_CORRUPT = int(ValueFlag.CORRUPT)

# Per view of a view set: field, lo, hi, default row, TTL (ns, -1 = none), strict, staleness bound (ns).
_Plan = tuple[tuple[bytes, int, int, np.ndarray, int, bool, int], ...]


class CacheFront:
    """Serve-from-cache and fill-after-fetch for one near-cache (no I/O; one owner thread)."""

    def __init__(self, core: StoreCore, cache: NearCache, clock: Clock) -> None:
        self.core = core
        self.cache = cache
        self._clock = clock
        self._plans: dict[ViewSet, _Plan] = {}
        self.misses = 0  # entity keys fetched from the store
        self.unconfirmed = 0  # entity reads served from the cache without proof of freshness
        self.unavailable = 0  # reads that raised FeatureStoreUnavailable

    def plan(self, views: ViewSet) -> _Plan:
        """The per-view facts a cache hit needs, computed once per view set."""
        p = self._plans.get(views)
        if p is None:
            p = self._plans[views] = tuple(
                (r.field, r.lo, r.hi, r.default, -1 if r.ttl_ns is None else r.ttl_ns, r.strict,
                 r.max_staleness_ns)
                for r in views.views
            )
        return p

    def serve(
        self, e: CacheEntry, plan: _Plan, rows: Rows, i: int, now: int, wall: int, proven: bool
    ) -> bool:
        """Fill row ``i`` from entry ``e`` if every view may be served from it; False otherwise."""
        vals = e.values
        flag = _CACHED
        stale = 0
        if not proven:
            flag |= _UNCONFIRMED
            stale = self.cache.staleness_ns(e.filled_ns, now)
        elif now - e.filled_ns > self.cache.entry_ttl_ns:
            return False  # the safety net under pushes: refetch old entries even while proven
        out, ages, flags = rows.values, rows.ages_ns, rows.flags
        for j, (fld, lo, hi, default, ttl, strict, bound) in enumerate(plan):
            v = vals.get(fld)
            if v is None or (not proven and (strict or stale > bound)):
                return False
            row, written = v
            if row is None:
                out[i, lo:hi] = default
                ages[i, j] = NO_AGE
                flags[i, j] = flag | _MISSING
                continue
            age = wall - written
            ages[i, j] = age
            if 0 <= ttl < age:
                out[i, lo:hi] = default
                flags[i, j] = flag | _EXPIRED
            else:
                out[i, lo:hi] = row
                flags[i, j] = flag
        if not proven:
            self.unconfirmed += 1
        return True

    def lookup(self, views: ViewSet, hkeys: Sequence[bytes], rows: Rows) -> tuple[list[int], int, int]:
        """Serve what the cache may; returns (row indices to fetch, cache epoch, fetch time ns)."""
        plan = self.plan(views)
        now = self._clock.now_ns()
        wall = self._clock.wall_ns()
        proven = self.cache.proven(now)
        get = self.cache.get
        miss = []
        for i, hk in enumerate(hkeys):
            e = get(hk)
            if e is None or not self.serve(e, plan, rows, i, now, wall, proven):
                miss.append(i)
        self.cache.hits += len(hkeys) - len(miss)
        return miss, self.cache.epoch, now

    def complete(
        self,
        views: ViewSet,
        hkeys: Sequence[bytes],
        miss: list[int],
        replies: list[list[bytes | None]],
        rows: Rows,
        epoch: int,
        filled_ns: int,
    ) -> None:
        """Decode fetched replies into ``rows`` (at the missed indices) and fill the cache."""
        self.misses += len(miss)
        if len(miss) == rows.n:
            part = rows
            self.core.decode(views, replies, rows)
        else:
            part = Rows.for_views(views, len(miss))
            part.reset(len(miss))
            self.core.decode(views, replies, part)
            idx = np.array(miss, dtype=np.intp)
            rows.values[idx] = part.values[: len(miss)]
            rows.ages_ns[idx] = part.ages_ns[: len(miss)]
            rows.flags[idx] = part.flags[: len(miss)]
        wall = self._clock.wall_ns()
        flags = part.flags[: len(miss)].tolist()
        ages = part.ages_ns[: len(miss)].tolist()
        copies = part.values[: len(miss)].copy()
        entries: dict[bytes, dict[bytes, Value]] = {}
        plan = self.plan(views)
        for k, i in enumerate(miss):
            fk = flags[k]
            if any(f & _CORRUPT for f in fk):
                continue
            row = copies[k]
            entries[hkeys[i]] = {
                fld: (None, NO_AGE) if fk[j] & _MISSING else (row[lo:hi], wall - ages[k][j])
                for j, (fld, lo, hi, *_) in enumerate(plan)
            }
        self.cache.fill(entries, filled_ns, epoch)

    def fail(self, views: ViewSet, exc: FeatureStoreUnavailable) -> FeatureStoreUnavailable:
        """The error a read raises when the store failed and the cache could not stand in."""
        self.unavailable += 1
        return FeatureStoreUnavailable(
            f"views {list(views.names)} of {views.entity!r}: the online store failed ({exc}) and the "
            "near-cache holds no value it may serve (strict views need proof of freshness, eventual "
            "views a value within their staleness bound)",
            views=views.names, reason=exc.reason,
        )

    def statistics(self) -> dict[str, Any]:
        """Near-cache counters plus the front's misses, unconfirmed serves and unavailable reads."""
        return {
            **self.cache.statistics(), "misses": self.misses, "unconfirmed": self.unconfirmed,
            "unavailable": self.unavailable,
        }


class NearCachedStore:
    """``OnlineStore``: a ``RedisOnlineStore`` behind a near-cache and an invalidation link.

    ``capacity`` bounds the cache in entities; ``mode`` picks the invalidation mechanism
    (``TRACKING`` by default; ``PUBSUB`` needs writers that publish, which ``RedisOnlineStore``
    does unless told not to); ``entry_ttl_s`` bounds how long an entry is trusted on pushes
    alone (see ``nearcache``).  ``start=False`` leaves the listener to the caller (tests pump it).
    """

    def __init__(
        self,
        store: RedisOnlineStore,
        *,
        capacity: int = 100_000,
        mode: InvalidationMode = InvalidationMode.TRACKING,
        clock: Clock | None = None,
        heartbeat_s: float = 0.5,
        entry_ttl_s: float = 60.0,
        start: bool = True,
    ) -> None:
        self.store = store
        self._clock: Clock = clock or MonotonicClock()
        self.cache = NearCache(capacity, self._clock, link_timeout_s=2 * heartbeat_s, entry_ttl_s=entry_ttl_s)
        self.front = CacheFront(store, self.cache, self._clock)
        self.listener = InvalidationListener(
            self.cache, dict(store.client.connection_pool.connection_kwargs), mode=mode,
            prefix=store.layout.prefix, channel=store.layout.channel, clock=self._clock,
            heartbeat_s=heartbeat_s,
        )
        if start:
            self.listener.start()

    def read(self, views: ViewSet, key: Any, out: Rows | None = None) -> Rows:
        """One entity: from the cache when it may serve it, else one ``HMGET``."""
        rows = out if out is not None else Rows.for_views(views)
        rows.reset(1)
        hk = self.store.layout.key(views.entity, key)
        e = self.cache.get(hk)
        if e is not None:
            now = self._clock.now_ns()
            wall = self._clock.wall_ns()
            if self.front.serve(e, self.front.plan(views), rows, 0, now, wall, self.cache.proven(now)):
                self.cache.hits += 1
                return rows
        return self._fetch(views, [hk], [0], rows, self.cache.epoch, self._clock.now_ns())

    def read_many(self, views: ViewSet, keys: Sequence[Any], out: Rows | None = None) -> Rows:
        """Many entities: cached ones from memory, the rest in one pipelined round trip."""
        rows = out if out is not None else Rows.for_views(views, max(len(keys), 1))
        rows.reset(len(keys))
        hkeys = self.store.hash_keys(views, keys)
        miss, epoch, now = self.front.lookup(views, hkeys, rows)
        if not miss:
            return rows
        return self._fetch(views, hkeys, miss, rows, epoch, now)

    def _fetch(
        self, views: ViewSet, hkeys: Sequence[bytes], miss: list[int], rows: Rows, epoch: int, now: int
    ) -> Rows:
        try:
            replies = self.store.fetch(views, [hkeys[i] for i in miss] if len(miss) < len(hkeys) else hkeys)
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
        v = view if isinstance(view, FeatureView) else self.store.stored_view(view)
        assert v.spec.entity is not None
        self.cache.invalidate(self.store.layout.keys(v.spec.entity, keys))

    def statistics(self) -> dict[str, Any]:
        """Store, near-cache and invalidation link counters."""
        return {
            **self.store.statistics(),
            "near_cache": self.front.statistics(),
            "link": self.listener.statistics(),
        }

    def close(self) -> None:
        """Stop the listener and close the store (idempotent)."""
        self.listener.close()
        self.store.close()
