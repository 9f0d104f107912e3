"""The reply path's one copy of each decision, shared by every side-path reader.

Without a tap each side task that reads decisions (the audit log, the drift monitor, the
latency recorder) would be an engine hook of its own and copy what it needs on the reply
path.  A ``DecisionTap`` is the one engine hook for all of them: per decision it stores one
tuple in a preallocated list — the decision, its feature rows and the write times of the
stored rows behind them as two ``bytes`` (``ndarray.tobytes``: cheaper than a numpy row
assignment, and invisible to the cyclic collector), its fill time and its row count (0 for a
single decision) — and moves one counter.  Nothing is encoded, formatted or locked there, and
no clock is read: the decision's time follows from its fill time and stage timings
(``decided_ns``), its wall-clock time from the tap's ``wall_offset`` on the side path.  One
tuple in one list, rather than one list per field, matters on a call whose caches went cold
between requests: every distinct cache line the hook touches costs ~0.1 µs there (measured:
six lists +1.4 µs on a 7.3 µs call, one +1.0).  Readers turn runs of entries back into
arrays with one ``np.frombuffer`` over the joined bytes.

Readers (``reader()``) each keep their own position and take entries on the side path; an
entry stays until the slowest reader has passed it (and any reader's ``hold`` position), then
``release`` lets it go in bulk (so the reply path never frees old objects in cold memory).
When the ring is full (the slowest reader is ``capacity`` entries behind) a decision is not
kept: the tap counts it in ``dropped`` and each reader learns how many it missed
(``TapReader.missed``) — the audit log writes that gap into its chain.  The reply path never
waits.

Owner: the engine's thread (the hook, the readers and ``release``) — no locks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tailguard.decision import BatchDecision, Decision
from tailguard.engine import Engine

__all__ = ["DECISION", "FEATURES", "FILLED", "ROWS", "WRITTEN", "DecisionTap", "TapFeed", "TapReader",
           "decided_ns", "singles"]

#: Fields of an entry tuple: the decision, its feature rows (float32 bytes, ``width`` per row),
#: the stored rows' write times (int64 bytes, ``n_views`` per row, ``NEVER``: unknown or never
#: written), the fill time (engine clock) and the row count of a batch decision (0: a single
#: decision).  No clock is read for an entry: when the decision was made follows from the fill
#: time and its stage timings (``decided_ns``), its wall-clock time from that and the tap's
#: ``wall_offset`` (two clock reads cost ~0.8 µs on a call whose caches went cold).
DECISION, FEATURES, WRITTEN, FILLED, ROWS = range(5)


def decided_ns(entry: tuple[Any, ...]) -> int:
    """When the entry's decision was made (its reply formed), engine clock: the engine fills the
    features at ``t1`` (``FILLED``) and stamps ``features``, ``inference`` and ``delivery`` from
    there, so their sum lands on the decision's end (``t4``) exactly."""
    t = entry[DECISION].timings_ns
    return int(entry[FILLED] + t[1] + t[2] + t[3])

_NONES: list[None] = [None] * 1024


class DecisionTap:
    """The last ``capacity`` decisions of ``engine`` (rounded up to a power of two) with copies
    of their feature rows and stored-row write times (see the module docstring)."""

    def __init__(self, engine: Engine, capacity: int = 1 << 14, *,
                 wall_clock: Callable[[], int] = time.time_ns, history: int = 0) -> None:
        cap = 1 << max(0, (capacity - 1).bit_length())
        if not 0 <= history < cap:
            raise ValueError(f"history must be in [0, capacity): {history}, {cap}")
        self.capacity = cap
        #: Entries every reader has passed that are still kept (the newest ``history``), for
        #: scrapes that look at recent decisions (``observe.prometheus``: feature ages).
        self.history = history
        self.mask = cap - 1
        self.engine = engine
        self._assembler = asm = engine.assembler
        self.width = asm.width
        self.n_views = len(asm.stored_views)
        #: Per slot: one entry tuple (fields ``DECISION`` ... ``ROWS``), or None once released.
        self.slots: list[Any] = [None] * cap
        self._wall, self._mono = wall_clock, engine.clock.now_ns
        self.head = 0
        self._limit = cap - history  # ``head`` stays below the slowest reader's position + this
        self._freed = 0  # slots below this hold no decision any more
        self.dropped = 0
        self._readers: list[TapReader] = []

    # -- reply path (engine hooks) ----------------------------------------------------------------
    def on_decision(self, d: Decision) -> None:
        """Keep one decision: two small ``bytes``, one tuple, one list store, one increment."""
        h = self.head
        if h >= self._limit:
            self.dropped += 1
            return
        asm = self._assembler
        # The engine's and the assembler's first rows, looked up each time: a batch larger than
        # their buffers replaces them, even one that then fails validation.  (``_keep`` is the
        # same for another engine's decisions; inlined here, the reply path's case.)
        self.slots[h & self.mask] = (d, self.engine._wide_row.tobytes(), asm._written_row.tobytes(),
                                     asm.filled_ns, 0)
        self.head = h + 1

    def _keep(self, d: Decision, engine: Engine) -> None:
        h = self.head
        if h >= self._limit:
            self.dropped += 1
            return
        asm = engine.assembler
        self.slots[h & self.mask] = (d, engine._wide_row.tobytes(), asm._written_row.tobytes(),
                                     asm.filled_ns, 0)
        self.head = h + 1

    def on_batch(self, d: BatchDecision) -> None:
        """Keep one batch decision with copies of its feature rows and write times."""
        self._keep_batch(d, self.engine)

    def _keep_batch(self, d: BatchDecision, engine: Engine) -> None:
        h = self.head
        if h >= self._limit:
            self.dropped += 1
            return
        n = len(d)
        feats, written = engine.last_features(n).tobytes(), engine.last_written_ns(n).tobytes()
        filled = engine.assembler.filled_ns
        self.slots[h & self.mask] = (d, feats, written, filled, n)
        self.head = h + 1

    def wall_offset(self) -> int:
        """Wall-clock ns minus the engine clock's ns, now: an entry's wall-clock time is
        ``decided_ns(entry) + wall_offset()`` read on the side path within milliseconds of the
        decision (NTP slews the wall clock by at most 0.5 ms a second: well inside 1 µs over a
        side-path tick)."""
        return self._wall() - self._mono()

    def put(self, entry: tuple[Any, ...]) -> bool:
        """Keep one entry made elsewhere (a side process rebuilding another process's tap from
        the wire, ``tailguard.observe.sidechild``); False (counted in ``dropped``) when full."""
        h = self.head
        if h >= self._limit:
            self.dropped += 1
            return False
        self.slots[h & self.mask] = entry
        self.head = h + 1
        return True

    def feed(self, engine: Engine) -> TapFeed:
        """A hook for another engine over the same store and assembler (a canary's, built by
        ``tailguard.rollout``): its decisions go into this tap with that engine's rows."""
        return TapFeed(self, engine)

    # -- readers (side path) ------------------------------------------------------------------------
    def reader(self) -> TapReader:
        """A new reader, starting at the next decision."""
        r = TapReader(self)
        self._readers.append(r)
        return r

    def remove(self, reader: TapReader) -> None:
        """Forget ``reader`` (a closed side task): it no longer holds entries back."""
        if reader in self._readers:
            self._readers.remove(reader)
        self.release()

    def release(self) -> None:
        """Free the entries every reader has passed (called by readers after they advance), in
        slice stores: a slot still holding its entry when the reply path overwrites it would
        free the entry's objects there, in memory long gone cold."""
        low = min((r.position if r.hold is None else min(r.position, r.hold) for r in self._readers),
                  default=self.head)
        self._limit = low + self.capacity - self.history
        low -= self.history
        start = max(self._freed, low - self.capacity)
        while start < low:  # runs that do not wrap around the ring
            i = start & self.mask
            n = min(low - start, self.capacity - i)
            self.slots[i:i + n] = _NONES[:n] if n <= len(_NONES) else [None] * n
            start += n
        self._freed = max(self._freed, low)

    def backlog(self, ignore: TapReader | None = None) -> int:
        """Entries the slowest reader (other than ``ignore``) has not taken yet."""
        return self.head - min((r.position for r in self._readers if r is not ignore), default=self.head)

    def entries(self, position: int, n: int) -> list[Any]:
        """The ``n`` entries from ``position`` on (a reader's run; at most to the end of the ring:
        callers split runs that wrap)."""
        i = position & self.mask
        return self.slots[i:i + n]

    def row_features(self, slot: int) -> np.ndarray:
        """Feature rows of the entry at ``slot`` (a ring index): float32, shape (n, width)."""
        return np.frombuffer(self.slots[slot][FEATURES], dtype=np.float32).reshape(-1, self.width)

    def row_written(self, slot: int) -> np.ndarray:
        """Stored-row write times of the entry at ``slot``: int64, shape (n, views)."""
        return np.frombuffer(self.slots[slot][WRITTEN], dtype=np.int64).reshape(-1, self.n_views)


def singles(entries: list[Any]) -> bool:
    """Whether every entry of a run is a single decision."""
    return not any(e[ROWS] for e in entries)


class TapFeed:
    """An engine hook that keeps another engine's decisions in a ``DecisionTap``."""

    def __init__(self, tap: DecisionTap, engine: Engine) -> None:
        self.tap, self.engine = tap, engine

    def on_decision(self, d: Decision) -> None:
        """Keep one decision of ``engine`` in the tap."""
        self.tap._keep(d, self.engine)

    def on_batch(self, d: BatchDecision) -> None:
        """Keep one batch decision of ``engine`` in the tap."""
        self.tap._keep_batch(d, self.engine)


class TapReader:
    """One side task's position in a ``DecisionTap``."""

    def __init__(self, tap: DecisionTap) -> None:
        self.tap = tap
        self.position = tap.head
        #: When set, entries from here on stay kept even once ``position`` passed them (a
        #: reader that must be able to go back: the side process's export, until acknowledged).
        self.hold: int | None = None
        self._dropped_seen = tap.dropped

    def pending(self) -> int:
        """Entries kept and not yet taken by this reader."""
        return self.tap.head - self.position

    def missed(self) -> int:
        """Decisions the tap could not keep since the last call (it was full)."""
        n = self.tap.dropped - self._dropped_seen
        self._dropped_seen = self.tap.dropped
        return n

    def run(self, limit: int) -> list[Any]:
        """The next entries for this reader, at most ``limit`` and not wrapping around the ring
        (take them, then ``advance``)."""
        tap = self.tap
        i = self.position & tap.mask
        n = min(tap.head - self.position, limit, tap.capacity - i)
        return tap.slots[i:i + n] if n > 0 else []

    def advance(self, to: int) -> None:
        """Mark every entry below position ``to`` as taken (frees them once all readers have)."""
        self.position = to
        self.tap.release()
