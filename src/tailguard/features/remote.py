"""The engine's feature stage when stored views live in a shared online store (Redis + near-cache).

``RemoteFeatures`` fills the engine's wide vector from an ``OnlineStore`` (in practice a
``NearCachedStore``): per entity of the service, one view set (the stored views the models
read, compiled once) and a preallocated ``Rows``; a decision reads one entity, a batch N
entities, in **one round trip** per entity type (none when the near-cache may serve them).
The values are copied into the wide vector with one numpy assignment per entity type; the
request views and the stored views' defaults come from the ``FeatureAssembler`` as usual
(it fills from its defaults row, then the store's values overwrite the stored columns).

**Ages.**  Each read carries the age of every value; the assembler's ``written_ns`` (what
``Engine.last_written_ns`` returns, what the audit log records) gets the write time on the
engine clock, ``filled_ns - age``, and ``NEVER`` where the store holds no value — the same
meaning as with the embedded store.

**Flags.**  Every view of an entity missing -> ``UNKNOWN_ENTITY``; some missing, expired or
corrupt -> ``STALE_FEATURE`` (defaults served); an eventual value served from the near-cache
without proof of freshness -> ``UNCONFIRMED_FEATURE``.  When the store cannot be read in time
and the cache may not stand in (``FeatureStoreUnavailable``, or any store error) the fill
returns ``FEATURES_UNAVAILABLE`` for every row (``down`` is set): the engine skips its model
rungs and lets the rungs below them answer.  A batch is read in one round trip, so it is
served or unavailable as a whole.

**Breaker.**  The reads that reach the store pass through a circuit breaker
(``resilience.breaker``, configured by ``online_breaker`` from ``[online] breaker_*``): each
read that fetched from the store is recorded (a ``FeatureStoreUnavailable`` as a failure, with
its duration for the slow-call rule; reads the near-cache answered alone are not calls).
While it is open a request does not touch the store: the near-cache serves what it may on
its own (``NearCachedStore.begin_read``: proven values, eventual values within their bound,
flagged ``UNCONFIRMED_FEATURE``) and everything else is ``FEATURES_UNAVAILABLE`` at once.
Half-open, one read is let through as the trial; it closes the breaker, so Redis coming back
needs no restart, only the open period.

``KeyIndex`` stands in for the embedded store as the engine's key -> row map: the ladder
keeps per-entity state (last good answers) by row, and a replica that never writes an entity
must still give it a row.  Owner: the engine's thread (like the engine).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.lib import recfunctions

from tailguard.clock import Clock
from tailguard.decision import Flag
from tailguard.errors import FeatureError
from tailguard.features.assembler import FeatureAssembler
from tailguard.features.online.errors import FeatureStoreError, FeatureStoreUnavailable
from tailguard.features.online.protocol import (
    NO_AGE,
    Consistency,
    OnlineStore,
    Rows,
    ValueFlag,
    ViewPolicy,
    ViewSet,
)
from tailguard.features.store import NEVER, InMemoryOnlineStore
from tailguard.features.view import FeatureView
from tailguard.resilience.breaker import BreakerConfig, BreakerState, CircuitBreaker
from tailguard.spec import EntitySpec, OnlineSpec

__all__ = ["KeyIndex", "RemoteFeatures", "feature_counters", "online_breaker", "view_policies"]

_UNKNOWN = np.uint8(Flag.UNKNOWN_ENTITY)
_STALE = np.uint8(Flag.STALE_FEATURE)
_UNAVAILABLE = int(Flag.FEATURES_UNAVAILABLE)
_UNCONFIRMED = np.uint8(Flag.UNCONFIRMED_FEATURE)
_V_MISSING = int(ValueFlag.MISSING)
_V_DEFAULTS = int(ValueFlag.MISSING | ValueFlag.EXPIRED | ValueFlag.CORRUPT)
_V_UNCONFIRMED = int(ValueFlag.UNCONFIRMED)
_V_FLAGGED = _V_DEFAULTS | _V_UNCONFIRMED  # the value flags a decision reports (not CACHED)
_UNKNOWN_I, _STALE_I, _UNCONFIRMED_I = int(_UNKNOWN), int(_STALE), int(_UNCONFIRMED)
_V_CACHED = int(ValueFlag.CACHED)
_CLOSED = BreakerState.CLOSED
#: The online breaker's longest open period (s): one failed trial read per second at worst, and
#: a Redis that answers again (only slowly before, so the invalidation link never dropped) is
#: tried within a second.
MAX_OPEN_S = 1.0
#: Kept free after a bounded store read for the rungs that answer without features (ns).
READ_RESERVE_NS = 30_000


def online_breaker(online: OnlineSpec, clock: Clock | None = None) -> CircuitBreaker:
    """The online store's circuit breaker as ``[online]`` declares it: ``breaker_failures`` reads
    failed in a row or half of the last ``breaker_window`` failed or slow (longer than
    ``breaker_slow``, by default half the read ``timeout``) open it for ``breaker_open``,
    doubled per failed trial up to ``MAX_OPEN_S`` (or ``breaker_open`` when longer): Redis back
    is noticed within that, however long the outage; one trial read closes it."""
    slow = online.breaker_slow if online.breaker_slow is not None else online.timeout / 2
    cfg = BreakerConfig(failures=online.breaker_failures, window=online.breaker_window, slow_s=float(slow),
                        open_s=float(online.breaker_open),
                        max_open_s=max(MAX_OPEN_S, float(online.breaker_open)))
    return CircuitBreaker(cfg, clock, name="online")


def view_policies(views: Mapping[str, FeatureView]) -> dict[str, ViewPolicy]:
    """Each stored view's consistency class and staleness bound, from its spec."""
    out: dict[str, ViewPolicy] = {}
    for name, v in views.items():
        if v.is_request:
            continue
        bound = v.spec.max_staleness
        out[name] = ViewPolicy(Consistency(v.spec.consistency), 0.0 if bound is None else float(bound))
    return out


class KeyIndex(InMemoryOnlineStore):
    """The engine's key -> row map over a remote store: every key read gets a row (up to
    ``max_keys`` per entity; later keys get row 0: no last good answer), and writes go to the
    remote store.  It holds no values: the stored views' tables keep only the defaults row
    (what the assembler fills from), so ``read``/``read_many``/``age_ns`` raise — read through
    the online store — and ``view_ages_ns`` is empty (ages are recorded per decision instead).
    """

    def __init__(
        self,
        views: Mapping[str, FeatureView],
        entities: Iterable[EntitySpec],
        remote: OnlineStore,
        *,
        clock: Clock | None = None,
        max_keys: int = 1_000_000,
    ) -> None:
        super().__init__(views, entities, clock=clock, capacity=2)
        self.remote = remote
        self.max_keys = max_keys
        #: Keys that got row 0 because the index was full.
        self.overflow = 0

    def _index(self, entity: str, key: Any) -> int:
        ent = self.entity_index(entity)
        if type(key) is not ent.key_type:
            if ent.key_type is not int or not isinstance(key, np.integer):
                return super().row(entity, key)  # raises the precise ValidationError
            key = int(key)
        row = ent.rows.get(key)
        if row is None:
            if len(ent.rows) >= self.max_keys:
                self.overflow += 1
                return 0
            row = ent.rows[key] = len(ent.rows) + 1
        return row

    def row(self, entity: str, key: Any) -> int:
        """The row of ``key``, given on first sight (0 once the index is full)."""
        return self._index(entity, key)

    def rows(self, entity: str, keys: Sequence[Any]) -> np.ndarray:
        """Rows of many keys at once (given on first sight), as an int64 array."""
        ent = self.entity_index(entity)
        kt = ent.key_type
        if set(map(type, keys)) - {kt}:  # one C-speed pass; coercion (or the error) only on mismatch
            for k in keys:
                if type(k) is not kt:
                    self._index(entity, k)  # raises ValidationError unless a numpy integer for int keys
            keys = [k if type(k) is kt else int(k) for k in keys]
        get = ent.rows.get
        out = np.fromiter((get(k, 0) for k in keys), dtype=np.int64, count=len(keys))
        if not out.all():  # first sight of some keys
            for i in np.flatnonzero(out == 0).tolist():
                out[i] = self._index(entity, keys[i])
        return out

    def read(self, view: str, key: Any) -> np.ndarray:
        """Not held here: raises ``FeatureError`` (read through the online store)."""
        raise FeatureError(f"view {view!r} lives in the shared online store: read it through Service.online")

    def read_many(self, view: str, keys: Sequence[Any]) -> np.ndarray:
        """Not held here: raises ``FeatureError`` (read through the online store)."""
        return self.read(view, keys)

    def age_ns(self, view: str, key: Any) -> int | None:
        """Not held here: raises ``FeatureError`` (ages come with every read of the online store)."""
        self.read(view, key)
        return None

    def write(
        self, view: str, key: Any, values: Sequence[float] | np.ndarray, event_ns: int | None = None
    ) -> None:
        """Write one entity's fields of ``view`` to the remote store."""
        self.remote.write(view, key, values, event_ns)

    def write_many(
        self, view: str, keys: Sequence[Any], values: np.ndarray, event_ns: np.ndarray | None = None
    ) -> None:
        """Write many rows of ``view`` to the remote store (structured rows are converted)."""
        if values.dtype.names is not None:
            values = recfunctions.structured_to_unstructured(values, dtype=np.float32)
        self.remote.write_many(view, keys, values, event_ns)

    def statistics(self) -> dict[str, Any]:
        """Keys indexed per entity, keys refused because the index was full."""
        return {"entities": {n: len(self.entity_index(n).rows) for n in self._entities},
                "max_keys": self.max_keys, "overflow": self.overflow}


class _Part:
    """The stored views of one entity: their view set, read buffer and place in the wide vector."""

    __slots__ = ("cols", "entity", "rows", "views", "wcols", "wlist")

    def __init__(self, views: ViewSet, cols: list[int], wcols: list[int]) -> None:
        self.entity = views.entity
        self.views = views
        self.rows = Rows.for_views(views, 64)
        self.cols = _slice_or_index(cols)
        self.wcols = _slice_or_index(wcols)
        self.wlist = tuple(wcols)


def _slice_or_index(idx: list[int]) -> slice | np.ndarray:
    """A slice when ``idx`` is a run of consecutive positions (cheaper to assign through)."""
    if idx == list(range(idx[0], idx[0] + len(idx))):
        return slice(idx[0], idx[0] + len(idx))
    return np.array(idx, dtype=np.intp)


class RemoteFeatures:
    """Fills the engine's wide vector from an online store (see the module docstring)."""

    def __init__(
        self,
        store: OnlineStore,
        assembler: FeatureAssembler,
        views: Mapping[str, FeatureView],
        policies: Mapping[str, ViewPolicy] | None = None,
        *,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if not assembler.entities:
            raise FeatureError("a remote feature stage needs stored views (the models read none)")
        self.store = store
        #: Guards the reads that reach the store (default: ``online_breaker`` of a default ``[online]``).
        #: Replaceable between decisions (owner thread).
        self.breaker = breaker if breaker is not None else online_breaker(OnlineSpec())
        # The near-cache alone, without I/O, for reads while the breaker is not closed (None:
        # the store has no cache, nothing may be served without it).
        self._cache_one = getattr(store, "begin_read", None)
        self._cache_many = getattr(store, "begin_read_many", None)
        # Bounds the next reads by what the request has left (a Redis store, behind a near-cache or not).
        self._bound = getattr(getattr(store, "store", store), "bound_reads", None)
        # The near-cache's invalidation link: when it reconnects, Redis is back (see ``_trial``).
        self._cache = getattr(store, "cache", None)
        #: When set, no read waits longer than this (ns), whatever the request has left: a server
        #: whose one engine thread serves every class caps reads at the tightest class budget, so
        #: a bulk request's read cannot hold a critical one up for longer (``serve.app``).
        self.read_cap_ns: int | None = None
        self._link_seen = 0 if self._cache is None else self._cache.link_connects
        self._assembler = assembler
        policies = policies if policies is not None else view_policies(views)
        layout = assembler.stored_layout
        parts: list[_Part] = []
        for pos, entity in enumerate(assembler.entities):
            mine = [(j, name, lo, hi) for j, (name, p, lo, hi) in enumerate(layout) if p == pos]
            vs = ViewSet([views[name] for _, name, _, _ in mine],
                         {name: policies[name] for _, name, _, _ in mine if name in policies})
            assert vs.entity == entity
            cols = [c for _, _, lo, hi in mine for c in range(lo, hi)]
            parts.append(_Part(vs, cols, [j for j, *_ in mine]))
        self._parts = tuple(parts)
        # The assembler fills request views and every stored view's defaults from row 0.
        self._zero1 = (0,) * len(parts)
        self._zeros = np.zeros((64, len(parts)), dtype=np.int64)
        #: True when the last fill could not read the store (its decision skips the model rungs).
        self.down = False
        self.unavailable = 0  # decision rows answered without the store (FEATURES_UNAVAILABLE)
        self.unconfirmed = 0  # decision rows that used an unconfirmed cached value

    @property
    def view_sets(self) -> tuple[ViewSet, ...]:
        """The view set read per entity, in ``assembler.entities`` order."""
        return tuple(p.views for p in self._parts)

    # -- one entity --------------------------------------------------------------------------
    def fill_one(self, keys: Any, ctx: Mapping[str, Any] | None, out: np.ndarray, now_ns: int,
                 deadline_ns: int | None = None) -> int:
        """Fill ``out`` (the wide vector, 1-D) for one entity key (or {entity: key}); returns
        flag bits.  Keys were validated by the engine's row lookup.  A store read waits at most
        until ``deadline_ns`` (engine clock) less ``READ_RESERVE_NS``, left for the ladder."""
        if self._bound is not None and deadline_ns is not None:
            self._bound_read(deadline_ns - now_ns - READ_RESERVE_NS)
        a = self._assembler
        a.fill_one(self._zero1, ctx, out, now_ns)
        written = a.written_ns[0]
        flags = 0
        store = self.store
        br = self.breaker
        for p in self._parts:
            key = keys[p.entity] if isinstance(keys, Mapping) else keys
            if br.state is _CLOSED:
                start = br.now()
                try:
                    r = store.read(p.views, key, p.rows)
                except FeatureStoreError as exc:
                    self._failed(exc, start)
                    return self._unavailable(1)
                fl = r.flags[0].tolist()
                if not fl[0] & _V_CACHED:  # fetched from the store (a near-cache hit flags every view)
                    br.success(start)
            else:
                got = self._read_guarded(p, key)
                if got is None:
                    return self._unavailable(1)
                r, fl = got, got.flags[0].tolist()
            out[p.cols] = r.values[0]
            # One row of a few views: plain Python per view beats numpy's per-call overhead.
            bits = 0
            missing = _V_MISSING
            for j, age, f in zip(p.wlist, r.ages_ns[0].tolist(), fl, strict=True):
                written[j] = NEVER if age == NO_AGE else now_ns - age
                bits |= f
                missing &= f
            if bits & _V_FLAGGED:
                if missing:
                    flags |= _UNKNOWN_I
                elif bits & _V_DEFAULTS:
                    flags |= _STALE_I
                if bits & _V_UNCONFIRMED:
                    flags |= _UNCONFIRMED_I
        self.down = False
        if flags & _UNCONFIRMED_I:
            self.unconfirmed += 1
        return flags

    # -- many entities -----------------------------------------------------------------------
    def fill_many(
        self, keys: Any, n: int, ctx: Mapping[str, Any] | None, out: np.ndarray, now_ns: int,
        deadline_ns: int | None = None,
    ) -> np.ndarray:
        """Fill ``out[:n]`` for ``n`` entity keys (a sequence, or {entity: sequence or scalar},
        scalars broadcast); returns per-row flags (uint8).  Reads are bounded by ``deadline_ns``
        as in ``fill_one``."""
        if self._bound is not None and deadline_ns is not None:
            self._bound_read(deadline_ns - now_ns - READ_RESERVE_NS)
        if n > self._zeros.shape[0]:
            self._zeros = np.zeros((n, len(self._parts)), dtype=np.int64)
        a = self._assembler
        flags = a.fill_many(self._zeros[:n], ctx, out, now_ns)
        flags[:] = 0
        written = a.written_ns
        store = self.store
        br = self.breaker
        for p in self._parts:
            ks = keys[p.entity] if isinstance(keys, Mapping) else keys
            if isinstance(ks, np.ndarray):
                ks = ks.tolist()
            elif isinstance(ks, str | bytes) or not isinstance(ks, Sequence):
                ks = [ks]  # one key for every row
            if br.state is _CLOSED:
                start = br.now()
                try:
                    r = store.read_many(p.views, ks, p.rows)
                except FeatureStoreError as exc:
                    self._failed(exc, start)
                    flags[:] = self._unavailable(n)
                    return flags
                if not int(np.bitwise_and.reduce(r.flags[: r.n, 0])) & _V_CACHED:  # some row fetched
                    br.success(start)
            else:
                got = self._read_many_guarded(p, ks)
                if got is None:
                    flags[:] = self._unavailable(n)
                    return flags
                r = got
            m = r.n
            out[:n, p.cols] = r.values[:m]
            ages = r.ages_ns[:m]
            written[:n, p.wcols] = np.where(ages == NO_AGE, NEVER, now_ns - ages)
            fl = r.flags[:m]
            if (fl & _V_FLAGGED).any():
                flags |= _row_flags(fl)
        self.down = False
        if flags.any():
            self.unconfirmed += int(np.count_nonzero(flags & _UNCONFIRMED))
        return flags

    # -- the breaker ---------------------------------------------------------------------------
    def _failed(self, exc: FeatureStoreError, start: int) -> None:
        """Record a closed-state read that raised: unreachable or slow (the store's timeout, or
        the request's remaining budget) is a failure; an error reply means the store answered
        (the call succeeded as far as its health goes); a request that had no time left to read
        says nothing about the store."""
        if isinstance(exc, FeatureStoreUnavailable):
            if exc.reason == "no_time":  # the request's budget was spent before the read: no verdict
                self.breaker.release()
            else:
                self.breaker.failure(start)
                if self._cache is not None:  # a link reconnect from now on means Redis is back
                    self._link_seen = self._cache.link_connects
        else:
            self.breaker.success(start)

    def _bound_read(self, left_ns: int) -> None:
        cap = self.read_cap_ns
        assert self._bound is not None
        self._bound((cap if cap is not None and cap < left_ns else left_ns) / 1e9)

    def _unavailable(self, n: int) -> int:
        self.down = True
        self.unavailable += n
        return _UNAVAILABLE

    def _read_guarded(self, p: _Part, key: Any) -> Rows | None:
        """One entity while the breaker is open or half-open: the near-cache alone when it may
        serve it, else the store if the breaker lets a trial through; None: unavailable."""
        if self._cache_one is not None:
            rows, _, served = self._cache_one(p.views, key, p.rows)
            if served:
                return rows  # type: ignore[no-any-return]
        return self._trial(lambda: self.store.read(p.views, key, p.rows))

    def _read_many_guarded(self, p: _Part, keys: Sequence[Any]) -> Rows | None:
        """``_read_guarded`` for a batch: served whole from the cache, or a trial, or None."""
        if self._cache_many is not None:
            rows, _, miss, _, _ = self._cache_many(p.views, keys, p.rows)
            if not miss:
                return rows  # type: ignore[no-any-return]
        return self._trial(lambda: self.store.read_many(p.views, keys, p.rows))

    def _trial(self, read: Callable[[], Rows]) -> Rows | None:
        br = self.breaker
        cache = self._cache
        if cache is not None and cache.link_connects != self._link_seen:
            # The invalidation link reconnected since the last failed read: Redis answers again,
            # so the trial is due now, not at the end of an open period grown by a long outage.
            self._link_seen = cache.link_connects
            if br.state is BreakerState.OPEN and cache.link_up:
                br.retry_at_ns = 0
        if not br.allow():
            return None
        start = br.now()
        try:
            r = read()
        except FeatureStoreError as exc:
            self._failed(exc, start)
            return None
        except BaseException:
            br.release()
            raise
        if r.n and not int(np.bitwise_and.reduce(r.flags[: r.n, 0])) & _V_CACHED:
            br.success(start)
        else:
            br.release()  # the cache answered after all (a fill in between): no call was made
        return r

    def statistics(self) -> dict[str, int]:
        """``features_unavailable`` and ``features_unconfirmed`` (decision rows), for the engine."""
        return {"features_unavailable": self.unavailable, "features_unconfirmed": self.unconfirmed}

    def reset_statistics(self) -> None:
        """Zero the counters, the breaker's included (not its state)."""
        self.unavailable = self.unconfirmed = 0
        self.breaker.reset_statistics()


def _row_flags(fl: np.ndarray) -> np.ndarray:
    """Decision flags per row from the per-value flags of a read, shape (m, n_views)."""
    missing = ((fl & _V_MISSING) != 0).all(axis=1)
    defaults = ((fl & _V_DEFAULTS) != 0).any(axis=1)
    unconfirmed = ((fl & _V_UNCONFIRMED) != 0).any(axis=1)
    out = np.where(missing, _UNKNOWN, np.where(defaults, _STALE, np.uint8(0))).astype(np.uint8)
    out[unconfirmed] |= _UNCONFIRMED
    return out


def feature_counters(remote: RemoteFeatures | None) -> dict[str, int]:
    """The remote feature stage's counters (zeros without one), for ``Engine.statistics``."""
    return {"features_unavailable": 0, "features_unconfirmed": 0} if remote is None else remote.statistics()
