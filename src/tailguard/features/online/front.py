"""The near-cache's front: which cached values a read may serve, and filling the cache after a fetch.

``CacheFront`` holds that logic without I/O (the rules are in ``cached``'s docstring);
``NearCachedBase`` adds what the blocking ``NearCachedStore`` and the asyncio
``AsyncNearCachedStore`` share (the cache, the front, the invalidation link, invalidating a
process's own writes, statistics), so those two only add their fetch.

**The hit path.**  A hit of a proven entry that holds every view of the view set, none of
them expired, copies a row that was concatenated once per entry and view set (the entry's
``memo``: entries are replaced, never changed, so the memo lives exactly as long as the
values it was made from) and sets an age and a flag per view: one numpy row copy instead of
one slice per view.  Everything else (unproven link, missing or expired views, an entry past
the entry TTL) takes the general per-view path, ``serve``.

Reads run on one owner thread (or loop); the listener runs on its own thread (see ``nearcache``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from tailguard.clock import Clock, MonotonicClock
from tailguard.features.online.errors import FeatureStoreUnavailable
from tailguard.features.online.invalidation import InvalidationListener, InvalidationMode
from tailguard.features.online.nearcache import CacheEntry, NearCache, Value
from tailguard.features.online.protocol import NO_AGE, Rows, ValueFlag, ViewSet
from tailguard.features.online.redis import StoreCore
from tailguard.features.online.replies import Fetched, Replies
from tailguard.features.view import FeatureView

__all__ = ["CacheFront", "NearCachedBase"]

_CACHED = int(ValueFlag.CACHED)
_UNCONFIRMED = int(ValueFlag.UNCONFIRMED)
_MISSING = int(ValueFlag.MISSING)
_EXPIRED = int(ValueFlag.EXPIRED)
_CORRUPT = int(ValueFlag.CORRUPT)
_NEVER = 2**63 - 1

S = TypeVar("S", bound=StoreCore)

# Per view of a view set: field, lo, hi, default row, TTL (ns, -1 = none), strict, staleness bound (ns).
_Plan = tuple[tuple[bytes, int, int, np.ndarray, int, bool, int], ...]
# An entry's memo: (view set, its whole row, write time per view, wall time its first view expires).
_Memo = tuple[ViewSet, np.ndarray, tuple[int, ...], int]


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

    def hit(self, views: ViewSet, hkey: bytes, rows: Rows, i: int = 0) -> bool:
        """Fill row ``i`` from the cache if it may serve every view of ``hkey``; False (nothing
        counted) when the key must be fetched.  Counts the hit."""
        e = self.cache.get(hkey)
        if e is None:
            return False
        now = self._clock.now_ns()
        if self.take(e, views, rows, i, now, self._clock.wall_ns(), self.cache.proven(now)):
            self.cache.hits += 1
            return True
        return False

    def take(
        self, e: CacheEntry, views: ViewSet, rows: Rows, i: int, now: int, wall: int, proven: bool
    ) -> bool:
        """Row ``i`` from entry ``e``: the memoised row when it applies, else ``serve`` (hits not counted)."""
        if proven and now - e.filled_ns <= self.cache.entry_ttl_ns:
            m: _Memo | None = e.memo
            if m is None or m[0] is not views:
                m = self._memo(e, views)
            if m is not None and wall <= m[3]:
                rows.values[i, : views.width] = m[1]
                ages, flags = rows.ages_ns, rows.flags
                for j, written in enumerate(m[2]):
                    ages[i, j] = wall - written
                    flags[i, j] = _CACHED
                return True
        return self.serve(e, self.plan(views), rows, i, now, wall, proven)

    def _memo(self, e: CacheEntry, views: ViewSet) -> _Memo | None:
        """The entry's whole row for ``views`` (None when a view is absent or cached as missing)."""
        parts: list[np.ndarray] = []
        written: list[int] = []
        expiry = _NEVER
        vals = e.values
        for fld, _lo, _hi, _default, ttl, _strict, _bound in self.plan(views):
            v = vals.get(fld)
            if v is None or v[0] is None:
                return None
            parts.append(v[0])
            written.append(v[1])
            if ttl >= 0:
                expiry = min(expiry, v[1] + ttl)  # age > ttl  <=>  wall > written + ttl
        m = e.memo = (views, np.concatenate(parts), tuple(written), expiry)
        return m

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
        now = self._clock.now_ns()
        wall = self._clock.wall_ns()
        proven = self.cache.proven(now)
        get, take = self.cache.get, self.take
        miss = []
        for i, hk in enumerate(hkeys):
            e = get(hk)
            if e is None or not take(e, views, rows, i, now, wall, proven):
                miss.append(i)
        self.cache.hits += len(hkeys) - len(miss)
        return miss, self.cache.epoch, now

    def complete(
        self,
        views: ViewSet,
        hkeys: Sequence[bytes],
        miss: list[int],
        replies: Replies | Fetched,
        rows: Rows,
        epoch: int,
        filled_ns: int,
    ) -> None:
        """Decode fetched replies into ``rows`` (at the missed indices) and fill the cache."""
        self.misses += len(miss)
        if len(miss) == rows.n:
            part = rows
            rows.flags[: rows.n] = 0  # a partial serve may have flagged some views before it gave up
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


class NearCachedBase(Generic[S]):
    """A store behind a near-cache and an invalidation link, less the fetch (sync or asyncio).

    ``capacity`` bounds the cache in entities; ``mode`` picks the invalidation mechanism;
    ``entry_ttl_s`` bounds how long an entry is trusted on pushes alone (see ``nearcache``);
    ``start=False`` leaves the listener to the caller (tests pump it).
    """

    def __init__(
        self,
        store: S,
        *,
        capacity: int = 100_000,
        mode: InvalidationMode = InvalidationMode.TRACKING,
        clock: Clock | None = None,
        heartbeat_s: float = 0.5,
        entry_ttl_s: float = 60.0,
        start: bool = True,
    ) -> None:
        self.store: S = store
        self._clock: Clock = clock or MonotonicClock()
        self.cache = NearCache(capacity, self._clock, link_timeout_s=2 * heartbeat_s, entry_ttl_s=entry_ttl_s)
        self.front = CacheFront(store, self.cache, self._clock)
        self.listener = InvalidationListener(
            self.cache, store.conn_kwargs, mode=mode, prefix=store.layout.prefix,
            channel=store.layout.channel, clock=self._clock, heartbeat_s=heartbeat_s,
        )
        if start:
            self.listener.start()

    def begin_read(self, views: ViewSet, key: Any, out: Rows | None) -> tuple[Rows, bytes, bool]:
        """One entity: (rows, its hash key, True when the cache served it)."""
        rows = out if out is not None else Rows.for_views(views)
        if rows.values.shape[0] < 1:
            rows.reset(1)
        rows.n = 1  # flags are set by a hit, or cleared by ``complete`` before a fetch's decode
        hk = self.store.layout.key(views.entity, key)
        return rows, hk, self.front.hit(views, hk, rows)

    def begin_read_many(
        self, views: ViewSet, keys: Sequence[Any], out: Rows | None
    ) -> tuple[Rows, list[bytes], list[int], int, int]:
        """Many entities: (rows, hash keys, row indices to fetch, cache epoch, fetch time ns)."""
        rows = out if out is not None else Rows.for_views(views, max(len(keys), 1))
        rows.reset(len(keys))
        hkeys = self.store.hash_keys(views, keys)
        miss, epoch, now = self.front.lookup(views, hkeys, rows)
        return rows, hkeys, miss, epoch, now

    @staticmethod
    def to_fetch(hkeys: list[bytes], miss: list[int]) -> list[bytes]:
        """The hash keys of the missed rows."""
        return hkeys if len(miss) == len(hkeys) else [hkeys[i] for i in miss]

    def written(self, view: str | FeatureView, keys: Sequence[Any]) -> None:
        """This process wrote ``keys`` of ``view``: drop them from its cache at once."""
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
