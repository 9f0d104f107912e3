"""The reply path's one copy of each decision, shared by every side-path reader.

Without a tap each side task that needs a decision's feature rows (the audit log, the drift
monitor) copies them itself, on the reply path, once per task.  A ``DecisionTap`` is the one
engine hook that does it for all of them: per decision it takes the feature rows and the
write times of the stored rows behind them as two ``bytes`` (``ndarray.tobytes``: cheaper
than a numpy row assignment, and bytes are invisible to the cyclic collector), and stores
them, the decision, its fill time and its wall-clock and monotonic times in preallocated
lists, and moves one counter.  Nothing is encoded, formatted or locked there.  Readers turn
runs of entries back into arrays with one ``np.frombuffer`` over the joined bytes.

Readers (``reader()``) each keep their own position and take entries on the side path; an
entry stays until the slowest reader has passed it.  When the ring is full (the slowest reader
is ``capacity`` entries behind) a decision is not kept: the tap counts it in ``dropped`` and
each reader learns how many it missed (``TapReader.missed``) — the audit log writes that gap
into its chain.  The reply path never waits.

Owner: the engine's thread (the hook, the readers and ``release``) — no locks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tailguard.decision import BatchDecision, Decision
from tailguard.engine import Engine

__all__ = ["DecisionTap", "TapFeed", "TapReader"]

_NONES: list[None] = [None] * 1024
_ZEROS: list[int] = [0] * 1024
_EMPTIES: list[bytes] = [b""] * 1024


class DecisionTap:
    """The last ``capacity`` decisions of ``engine`` (rounded up to a power of two) with copies
    of their feature rows and stored-row write times (see the module docstring)."""

    def __init__(self, engine: Engine, capacity: int = 1 << 14, *,
                 wall_clock: Callable[[], int] = time.time_ns) -> None:
        cap = 1 << max(0, (capacity - 1).bit_length())
        self.capacity = cap
        self.mask = cap - 1
        self.engine = engine
        self._assembler = asm = engine.assembler
        self.width = asm.width
        self.n_views = len(asm.stored_views)
        #: Per slot: the feature rows (float32, ``width`` per row) and the stored rows' write
        #: times (int64, ``n_views`` per row, ``NEVER``: unknown or never written), as bytes.
        self.features: list[bytes] = [b""] * cap
        self.written: list[bytes] = [b""] * cap
        self.items: list[Any] = [None] * cap
        #: Per slot: the row count of a batch decision; 0 for a single decision.
        self.batch_rows: list[int] = [0] * cap
        self.filled: list[int] = [0] * cap
        self.walls: list[int] = [0] * cap
        self.monos: list[int] = [0] * cap
        self._wall, self._mono = wall_clock, engine.clock.now_ns
        self.head = 0
        self._limit = cap  # ``head`` stays below the slowest reader's position + capacity
        self._freed = 0  # slots below this hold no decision any more
        self.dropped = 0
        self._readers: list[TapReader] = []

    # -- reply path (engine hooks) ----------------------------------------------------------------
    def on_decision(self, d: Decision) -> None:
        """Keep one decision: two small ``bytes``, six list stores, one increment."""
        h = self.head
        if h >= self._limit:
            self.dropped += 1
            return
        i = h & self.mask
        # The engine's and the assembler's first rows, looked up each time: a batch larger than
        # their buffers replaces them, even one that then fails validation.  (``_keep`` is the
        # same for another engine's decisions; inlined here, the reply path's case.)
        self.features[i] = self.engine._wide_row.tobytes()
        self.written[i] = self._assembler._written_row.tobytes()
        self.items[i] = d
        self.filled[i] = self._assembler.filled_ns
        self.walls[i] = self._wall()
        self.monos[i] = self._mono()
        self.head = h + 1

    def _keep(self, d: Decision, engine: Engine) -> None:
        h = self.head
        if h >= self._limit:
            self.dropped += 1
            return
        i = h & self.mask
        # The engine's and the assembler's first rows, looked up each time: a batch larger than
        # their buffers replaces them, even one that then fails validation.
        self.features[i] = engine._wide_row.tobytes()
        self.written[i] = engine.assembler._written_row.tobytes()
        self.items[i] = d
        self.filled[i] = self._assembler.filled_ns
        self.walls[i] = self._wall()
        self.monos[i] = self._mono()
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
        i = h & self.mask
        self.features[i] = engine.last_features(n).tobytes()
        self.written[i] = engine.last_written_ns(n).tobytes()
        self.batch_rows[i] = n
        self.items[i] = d
        self.filled[i] = self._assembler.filled_ns
        self.walls[i] = self._wall()
        self.monos[i] = self._mono()
        self.head = h + 1

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
        """Free the entries every reader has passed (called by readers after they advance)."""
        low = min((r.position for r in self._readers), default=self.head)
        self._limit = low + self.capacity
        start = max(self._freed, low - self.capacity)
        while start < low:  # slice stores, in runs that do not wrap around the ring
            i = start & self.mask
            n = min(low - start, self.capacity - i)
            # Everything the slots hold is let go here, on the side path, in bulk: a slot still
            # holding its old objects when the reply path overwrites it would free them there,
            # touching memory long gone cold (a cache miss per object).
            nones = _NONES[:n] if n <= len(_NONES) else [None] * n
            zeros = _ZEROS[:n] if n <= len(_ZEROS) else [0] * n
            empties = _EMPTIES[:n] if n <= len(_EMPTIES) else [b""] * n
            self.items[i:i + n] = nones
            self.batch_rows[i:i + n] = zeros
            self.features[i:i + n] = empties
            self.written[i:i + n] = empties
            self.filled[i:i + n] = zeros
            self.walls[i:i + n] = zeros
            self.monos[i:i + n] = zeros
            start += n
        self._freed = max(self._freed, low)

    def backlog(self) -> int:
        """Entries the slowest reader has not taken yet."""
        return self.head - min((r.position for r in self._readers), default=self.head)

    def row_features(self, slot: int) -> np.ndarray:
        """Feature rows of the entry at ``slot`` (a ring index): float32, shape (n, width)."""
        return np.frombuffer(self.features[slot], dtype=np.float32).reshape(-1, self.width)

    def row_written(self, slot: int) -> np.ndarray:
        """Stored-row write times of the entry at ``slot``: int64, shape (n, views)."""
        return np.frombuffer(self.written[slot], dtype=np.int64).reshape(-1, self.n_views)

    def run_of_singles(self, lo: int, hi: int) -> bool:
        """Whether ring slots ``lo..hi`` (no wrap) hold single decisions only."""
        return not any(self.batch_rows[lo:hi])


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
        self._dropped_seen = tap.dropped

    def pending(self) -> int:
        """Entries kept and not yet taken by this reader."""
        return self.tap.head - self.position

    def missed(self) -> int:
        """Decisions the tap could not keep since the last call (it was full)."""
        n = self.tap.dropped - self._dropped_seen
        self._dropped_seen = self.tap.dropped
        return n

    def advance(self, to: int) -> None:
        """Mark every entry below position ``to`` as taken (frees them once all readers have)."""
        self.position = to
        self.tap.release()
