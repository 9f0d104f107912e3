"""The near-cache: decoded feature values of hot entities in process memory, kept coherent by pushes.

An entry maps one entity's hash key to the views fetched for it: per hash field, the float32
row (``None`` when the store holds no value: unknown entities are cached too) and its write
time (wall ns), plus the monotonic time the fetch that filled it was *sent* (``filled_ns``).
The cache is bounded in entries and evicts by CLOCK (second chance): a hit sets a reference
bit, eviction skips and clears referenced entries once.  A hit is a dict lookup and a bit.

**Coherence.**  An invalidation listener (``invalidation``) drops the entries of keys that
writers changed and reports the state of its link: ``link_connected`` (which drops *every*
entry: invalidations may have been missed while the link was down), ``link_heard`` on every
message or heartbeat reply, and ``link_lost``.  While the link is up and heard within
``link_timeout_s``, every entry is *proven fresh*: it was fetched after the link connected,
and any later write whose push arrived would have removed it.  "Proven" is exact up to the
link timeout: a push lost to a silent network partition (no TCP reset) goes unnoticed until
the link is declared dead, at most ``link_timeout_s`` after it was last heard, so that is
the longest a strict value can be served stale (loopback and a crashed server reset the
link at once).  Otherwise an entry is known fresh only as of ``max(filled_ns,
last_heard_ns)``; ``staleness_ns`` is how long ago that was.

**Entry TTL.**  Pushes are the coherence mechanism; ``entry_ttl_s`` is the safety net under
them: an entry filled longer ago than that is not served as proven (it is fetched again), so
a push lost for any reason costs at most one entry TTL of staleness.  A fill into an entry
older than the TTL replaces it instead of merging, so the refreshed entry is young again.

**The fill race.**  A fetch that was sent before an invalidation of its key and returns after
it carries the old value; storing it would leave a stale entry no push will ever remove.  So
every invalidation bumps ``epoch`` and is logged; a fill passes the epoch read before its
fetch, and keys invalidated since (or everything, after a reconnect or a log overflow) are
not stored.

Threads: lookups (``get``) take no lock and run on the reading thread; fills, invalidations
and link changes take one lock (the listener thread and the reader never block each other
for longer than a dict operation).  Times come from the injected clock.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tailguard.clock import Clock

__all__ = ["NEVER_NS", "CacheEntry", "NearCache"]

#: ``last_heard_ns`` of a link never heard.
NEVER_NS = -(2**62)

#: One cached view value: (float32 row or None when the store held none, write time in wall ns).
Value = tuple[np.ndarray | None, int]


class CacheEntry:
    """One entity's cached views (made under the cache's lock, never changed after; read without it)."""

    __slots__ = ("filled_ns", "memo", "ref", "values")

    def __init__(self, values: dict[bytes, Value], filled_ns: int) -> None:
        self.values = values
        self.filled_ns = filled_ns
        self.ref = False
        #: The reading thread's precomputed hit for one view set (``cached.CacheFront``); entries are
        #: replaced, never changed, so it stays valid for the entry's life.
        self.memo: Any = None


class NearCache:
    """Bounded entity -> decoded values map with push invalidation (see the module docstring)."""

    def __init__(
        self,
        capacity: int,
        clock: Clock,
        *,
        link_timeout_s: float = 2.0,
        entry_ttl_s: float = 60.0,
        log_size: int = 65536,
    ) -> None:
        if capacity < 1:
            raise ValueError("a near-cache holds at least one entry")
        self.capacity = capacity
        self._clock = clock
        self._map: OrderedDict[bytes, CacheEntry] = OrderedDict()
        self._lock = threading.Lock()
        self._log: deque[bytes] = deque(maxlen=log_size)
        self._floor = 0  # fills that started before this epoch are refused (a clear happened since)
        self.epoch = 0
        self.link_up = False
        #: Times the invalidation link (re)connected (Redis answered it).
        self.link_connects = 0
        self.link_timeout_ns = round(link_timeout_s * 1e9)
        self.entry_ttl_ns = round(entry_ttl_s * 1e9)
        self.connected_ns = NEVER_NS
        self.last_heard_ns = NEVER_NS
        self.hits = 0
        self.fills = 0
        self.fills_refused = 0
        self.invalidations = 0
        self.evictions = 0
        self.clears = 0

    # -- reads (lock-free) ----------------------------------------------------------------
    def get(self, hkey: bytes) -> CacheEntry | None:
        """The entry of ``hkey`` (marked referenced), or None."""
        e = self._map.get(hkey)
        if e is not None:
            e.ref = True
        return e

    def proven(self, now_ns: int) -> bool:
        """True while every entry is proven fresh: link up and heard within the link timeout."""
        return self.link_up and now_ns - self.last_heard_ns <= self.link_timeout_ns

    def staleness_ns(self, filled_ns: int, now_ns: int) -> int:
        """How long ago an entry filled at ``filled_ns`` was last known fresh (0 while proven)."""
        if self.proven(now_ns):
            return 0
        return now_ns - max(filled_ns, self.last_heard_ns)

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, hkey: object) -> bool:
        return hkey in self._map

    # -- fills -------------------------------------------------------------------------------
    def fill(self, entries: Mapping[bytes, dict[bytes, Value]], filled_ns: int, epoch: int) -> int:
        """Store fetched values (merged into existing entries); returns how many keys were stored.

        ``epoch`` is ``self.epoch`` read before the fetch was sent, ``filled_ns`` the clock then.
        """
        with self._lock:
            refused: frozenset[bytes] | None = frozenset()
            changed = self.epoch - epoch
            if changed:
                if epoch < self._floor or changed > len(self._log):
                    refused = None  # a clear or too many invalidations since: store nothing
                else:
                    refused = frozenset(itertools.islice(reversed(self._log), changed))
            if refused is None:
                self.fills_refused += len(entries)
                return 0
            stored = 0
            m = self._map
            for hkey, values in entries.items():
                if hkey in refused:
                    self.fills_refused += 1
                    continue
                old = m.get(hkey)
                if (old is not None and not old.values.keys() <= values.keys()
                        and filled_ns - old.filled_ns <= self.entry_ttl_ns):
                    # Keep the older fill time: the merged entry is only as fresh as its oldest part
                    # (a fill that fetched every view the entry holds replaces it, fill time included).
                    merged = {**old.values, **values}
                    m[hkey] = e = CacheEntry(merged, min(old.filled_ns, filled_ns))
                    e.ref = old.ref
                else:
                    m[hkey] = CacheEntry(values, filled_ns)
                stored += 1
            self.fills += stored
            self._evict()
            return stored

    def _evict(self) -> None:
        m = self._map
        budget = 2 * len(m)  # CLOCK: one pass clears every reference bit, the next evicts
        while len(m) > self.capacity and budget:
            budget -= 1
            hkey, e = m.popitem(last=False)
            if e.ref:
                e.ref = False
                m[hkey] = e
            else:
                self.evictions += 1

    # -- invalidations (the listener's thread, or a local write) ------------------------------
    def invalidate(self, hkeys: Sequence[bytes]) -> int:
        """Drop the entries of ``hkeys``; log them for in-flight fills.  Returns entries dropped."""
        dropped = 0
        with self._lock:
            pop = self._map.pop
            for k in hkeys:
                self._log.append(k)
                if pop(k, None) is not None:
                    dropped += 1
            self.epoch += len(hkeys)
            self.invalidations += len(hkeys)
        return dropped

    def clear(self) -> None:
        """Drop every entry and refuse fills that started before now."""
        with self._lock:
            self._map.clear()
            self.epoch += 1
            self._floor = self.epoch
            self.clears += 1

    # -- the invalidation link ----------------------------------------------------------------
    def link_connected(self) -> None:
        """The link is (re)subscribed: drop everything (pushes may have been missed) and trust it."""
        now = self._clock.now_ns()
        self.clear()
        with self._lock:
            self.connected_ns = now
            self.last_heard_ns = now
            self.link_up = True
            self.link_connects += 1

    def link_heard(self) -> None:
        """A message or heartbeat reply arrived on the link."""
        self.last_heard_ns = self._clock.now_ns()

    def link_lost(self) -> None:
        """The link failed: entries stay, known fresh only as of the last time it was heard."""
        self.link_up = False

    def statistics(self) -> dict[str, Any]:
        """Entries, capacity, hits, fills (stored / refused), invalidations, evictions, link state."""
        return {
            "entries": len(self._map),
            "capacity": self.capacity,
            "hits": self.hits,
            "fills": self.fills,
            "fills_refused": self.fills_refused,
            "invalidations": self.invalidations,
            "evictions": self.evictions,
            "clears": self.clears,
            "link_up": self.link_up,
        }
