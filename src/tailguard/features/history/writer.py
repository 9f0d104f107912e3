"""The history writer: every online write (and every event) teed into Parquet, bitemporally.

``HistoryWriter`` is a ``FeatureWriter`` (what ``StreamProcessor`` writes to): it passes each
write on to the wrapped online store, then copies it into a preallocated per-view buffer —
key, event time, **known time** and values — a few array stores, no I/O, no allocation
(a full buffer is swapped for a pooled one).  Files are written off the hot path: ``drain``
(the ``SideTask`` protocol, for ``Service.attach``) writes full buffers as row groups;
``flush`` and ``close`` write everything.  Partitions and file names: ``layout.py``.

Known time (``known``): ``"wall"``, the clock's wall time at the write (the online path);
``"event"``, the row's event time (a replay of events the system saw as they happened); or
an int, one fixed time for every row (a backfill's run time).  When more than
``max_pending`` full buffers wait for a flush, new writes still reach the online store
but not the history: they are counted in ``dropped`` (the history then has a gap, and
``statistics()`` says so).

Ownership: one thread (the processor's) calls ``write``/``record_event``; ``drain``/``flush``
run on the same thread between batches.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tailguard.clock import Clock, MonotonicClock
from tailguard.features.history.layout import (
    day_of,
    days_of,
    events_dir,
    part_name,
    values_dir,
    write_parquet,
)
from tailguard.features.history.optional import pyarrow
from tailguard.features.history.versions import save_descriptor
from tailguard.features.stream import FeatureWriter
from tailguard.features.view import FeatureView

__all__ = ["HistoryWriter"]

_ARROW_TYPES = {
    "float32": "float32", "float64": "float64", "int32": "int32", "int64": "int64", "bool": "bool_",
}
_WRITER_IDS = itertools.count()


class _Buffer:
    """Rows of one view waiting to be written (preallocated; ``n`` rows used)."""

    __slots__ = ("event_ns", "keys", "known_ns", "n", "values")

    def __init__(self, capacity: int, n_fields: int) -> None:
        self.keys: list[Any] = [None] * capacity
        self.event_ns = np.zeros(capacity, dtype=np.int64)
        self.known_ns = np.zeros(capacity, dtype=np.int64)
        self.values = np.zeros((capacity, n_fields), dtype=np.float64)
        self.n = 0


class _ViewLog:
    __slots__ = ("current", "free", "pending", "view")

    def __init__(self, view: FeatureView, capacity: int) -> None:
        self.view = view
        self.current = _Buffer(capacity, len(view.spec.fields))
        self.pending: list[_Buffer] = []
        self.free: list[_Buffer] = []


class HistoryWriter:
    """Tees feature writes (and events) into the Parquet history under ``root``."""

    def __init__(
        self,
        root: str | Path,
        views: Mapping[str, FeatureView],
        inner: FeatureWriter | None = None,
        *,
        clock: Clock | None = None,
        known: Literal["wall", "event"] | int = "wall",
        capacity: int = 8192,
        max_pending: int = 64,
    ) -> None:
        pyarrow()  # fail at construction, not at the first flush, when the extra is missing
        self.root = Path(root)
        self._inner = inner
        self._wall = (clock or MonotonicClock()).wall_ns
        self._fixed_known = known if isinstance(known, int) else None
        self._known_from_event = known == "event"
        self._capacity = max(1, capacity)
        self._max_pending = max(1, max_pending)
        self._logs: dict[str, _ViewLog] = {}
        for name, v in views.items():
            if not v.is_request:
                self._logs[name] = _ViewLog(v, self._capacity)
                save_descriptor(self.root, v)
        self._events: list[Mapping[str, Any]] = []
        self._event_known: list[int] = []
        self._id = f"{os.getpid()}x{next(_WRITER_IDS)}"
        self._seq = itertools.count()
        self._arrival = 0
        self.written_rows = 0
        self.written_events = 0
        self.files = 0
        self.dropped = 0

    # -- the hot path --------------------------------------------------------------------
    def write(
        self, view: str, key: Any, values: Sequence[float] | np.ndarray, event_ns: int | None = None
    ) -> None:
        """Write to the online store (if any), then buffer the row for the history."""
        if self._inner is not None:
            self._inner.write(view, key, values, event_ns)
        log = self._logs[view]
        b = log.current
        i = b.n
        fixed = self._fixed_known
        if fixed is not None:
            known = fixed
        elif self._known_from_event and event_ns is not None:
            known = event_ns
        else:
            known = self._wall()
        b.values[i] = values
        b.keys[i] = key
        b.event_ns[i] = known if event_ns is None else event_ns
        b.known_ns[i] = known
        b.n = i + 1
        if b.n == self._capacity:
            self._seal(log)

    def _seal(self, log: _ViewLog) -> None:
        if len(log.pending) >= self._max_pending:
            self.dropped += log.current.n
            log.current.n = 0
            return
        log.pending.append(log.current)
        log.current = log.free.pop() if log.free else _Buffer(self._capacity, len(log.view.spec.fields))

    def record_event(self, event: Mapping[str, Any]) -> None:
        """Keep an event for the event log (by reference: do not mutate it afterwards)."""
        self._events.append(event)
        fixed = self._fixed_known
        if fixed is None and self._known_from_event and type(event.get("ts_ns")) is int:
            fixed = event["ts_ns"]
        self._event_known.append(self._wall() if fixed is None else fixed)

    # -- the side path ---------------------------------------------------------------------
    def drain(self, budget_ns: int | None = None) -> int:
        """Write full buffers (one part file per buffer and day) for at most ``budget_ns`` of
        real time (None: all of them); returns the rows written.  Partial buffers wait."""
        from time import perf_counter_ns

        end = None if budget_ns is None else perf_counter_ns() + budget_ns
        n = 0
        for log in self._logs.values():
            while log.pending:
                if end is not None and perf_counter_ns() >= end:
                    return n
                b = log.pending.pop(0)
                n += self._write_buffer(log.view, b)
                b.n = 0
                log.free.append(b)
        return n

    def flush(self) -> int:
        """Write every buffered row and event now; returns the rows (values and events) written."""
        for log in self._logs.values():
            if log.current.n:
                self._seal(log)
        n = self.drain(None)
        return n + self._write_events()

    def close(self) -> None:
        """Flush what is buffered (the ``SideTask`` protocol)."""
        self.flush()

    def statistics(self) -> dict[str, int]:
        """Rows and events written, files, rows waiting, rows dropped (history gaps)."""
        waiting = sum(lg.current.n + sum(b.n for b in lg.pending) for lg in self._logs.values())
        return {
            "written_rows": self.written_rows,
            "written_events": self.written_events,
            "files": self.files,
            "buffered_rows": waiting,
            "buffered_events": len(self._events),
            "dropped": self.dropped,
        }

    # -- files -------------------------------------------------------------------------------
    def _write_buffer(self, view: FeatureView, b: _Buffer) -> int:
        pa = pyarrow()
        n = b.n
        if n == 0:
            return 0
        keys = b.keys[:n]
        event_ns, known_ns = b.event_ns[:n], b.known_ns[:n]
        columns: dict[str, Any] = {
            "key": pa.array(keys, type=pa.string() if isinstance(keys[0], str) else pa.int64()),
            "event_ns": pa.array(event_ns, type=pa.int64()),
            "known_ns": pa.array(known_ns, type=pa.int64()),
        }
        for j, f in enumerate(view.spec.fields):
            # The same numpy cast the online store applies to the declared dtype, so the
            # history holds the bits a lookup would have returned.
            col = b.values[:n, j].astype(np.dtype(f.dtype))
            columns[f.name] = pa.array(col, type=getattr(pa, _ARROW_TYPES[f.dtype])())
        table = pa.table(columns)
        folder = values_dir(self.root, view.name, view.version)
        self._write_by_day(table, days_of(event_ns), folder, int(known_ns.min()))
        self.written_rows += n
        return n

    def _write_events(self) -> int:
        if not self._events:
            return 0
        pa = pyarrow()
        events, known = self._events, self._event_known
        self._events, self._event_known = [], []
        arrival = list(range(self._arrival, self._arrival + len(events)))
        self._arrival += len(events)
        # Rows whose fields have the same names and Python types share one table; a bad
        # event (a string price) lands in its own file instead of failing the batch.
        groups: dict[tuple[tuple[str, str], ...], list[int]] = {}
        for i, ev in enumerate(events):
            sig = tuple((k, type(v).__name__) for k, v in ev.items())
            groups.setdefault(sig, []).append(i)
        for rows in groups.values():
            table = pa.Table.from_pylist([dict(events[i]) for i in rows])
            table = table.append_column("known_ns", pa.array([known[i] for i in rows], type=pa.int64()))
            table = table.append_column("arrival", pa.array([arrival[i] for i in rows], type=pa.int64()))
            ts = [events[i].get("ts_ns") for i in rows]
            when = np.array([t if type(t) is int else known[i] for t, i in zip(ts, rows, strict=True)],
                            dtype=np.int64)
            self._write_by_day(table, days_of(when), events_dir(self.root), min(known[i] for i in rows))
        self.written_events += len(events)
        return len(events)

    def _write_by_day(self, table: Any, days: np.ndarray, folder: Path, first_known: int) -> None:
        pa = pyarrow()
        uniq = np.unique(days)
        for day in uniq.tolist():
            part = table if len(uniq) == 1 else table.filter(pa.array(days == day))
            name = part_name(first_known, self._id, next(self._seq))
            write_parquet(part, folder / f"dt={day_of(day * 86_400_000_000_000)}" / name, len(part))
            self.files += 1
