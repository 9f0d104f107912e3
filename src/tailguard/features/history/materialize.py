"""Materialize and backfill: the online stream code run over historical events.

Both build a fresh ``StreamProcessor`` from the service's compiled views — the same transform
objects and aggregates that serve online, so the same events in the same order give the same
values, bit for bit — and point it at a ``HistoryWriter`` (optionally teeing into an online
store as well).  They differ only in the **known time** they record:

* ``materialize``: each value is known at its event time (``known="event"``) — recreating
  what the online path would have written as the events arrived;
* ``backfill``: every value is known at the run time — a new view version or a corrected
  transform computed today, which a training row labelled before today must not see.

Events come from Parquet (a file, a folder such as ``HISTORY/events``, hive partitions
allowed, schemas unioned by name) or from memory, and are replayed by event time
(``order="event_time"``, ties in input order) or as they arrived (``order="arrival"``,
event logs written by ``HistoryWriter``).  Replay does not judge event times against today's
wall clock (``[stream].max_future``/``max_past`` are off): every historical event is "past".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec
import numpy as np

from tailguard.clock import Clock, MonotonicClock
from tailguard.errors import FeatureError
from tailguard.features.history.optional import duckdb, pyarrow
from tailguard.features.history.writer import HistoryWriter
from tailguard.features.stream import FeatureWriter, StreamProcessor
from tailguard.features.view import FeatureView, compile_views
from tailguard.spec import ServiceSpec, ViewSource, load_spec

__all__ = ["ServiceLike", "backfill", "load_views", "materialize", "read_events"]

#: Columns the event log adds (and the reader's bookkeeping), never passed to transforms.
_META = frozenset({"known_ns", "arrival", "dt", "filename", "file_row_number"})


class ServiceLike(Protocol):
    """What replay needs of a loaded service (``tailguard.service.Service`` has it)."""

    @property
    def spec(self) -> ServiceSpec:
        """The service spec (entities and ``[stream]`` settings are used)."""
        ...

    @property
    def views(self) -> dict[str, FeatureView]:
        """The compiled feature views, by name."""
        ...


def load_views(service: ServiceLike | str | Path) -> tuple[ServiceSpec, dict[str, FeatureView]]:
    """Spec and compiled views of a loaded service or of a service directory (models are not
    loaded: replay needs only the views)."""
    if isinstance(service, str | Path):
        root = Path(service).resolve()
        spec = load_spec(root)
        return spec, compile_views(spec.feature_views, str(root))
    return service.spec, dict(service.views)


def read_events(
    source: str | Path | Any | Iterable[Mapping[str, Any]],
    *,
    order: Literal["event_time", "arrival", "input"] = "event_time",
    batch_rows: int = 65_536,
) -> Iterator[dict[str, Any]]:
    """Events as dicts, in replay order.  ``source``: a Parquet file or folder, a
    ``pyarrow.Table``, or an iterable of mappings (kept in its own order unless sorted by
    ``ts_ns``).  Null fields (absent from that event's schema) are left out of its dict."""
    if isinstance(source, str | Path):
        yield from _read_parquet(Path(source), order, batch_rows)
        return
    pa = pyarrow()
    if isinstance(source, pa.Table):
        yield from _read_table(source, order, batch_rows)
        return
    rows = [dict(ev) for ev in source]
    if order != "input":
        rows.sort(key=_arrival_key if order == "arrival" else _event_time_key)
    for row in rows:
        yield {k: v for k, v in row.items() if v is not None and k not in _META}


def _arrival_key(event: Mapping[str, Any]) -> tuple[int, int]:
    return (event.get("known_ns", 0), event.get("arrival", 0))


def _event_time_key(event: Mapping[str, Any]) -> int:
    # An event without an int time sorts first; the processor then routes it as bad input.
    ts = event.get("ts_ns")
    return ts if type(ts) is int else -(1 << 63)


def _order_by(columns: Sequence[str], order: str) -> str:
    keys = []
    if order == "arrival":
        keys = [c for c in ("known_ns", "arrival") if c in columns]
    elif order == "event_time":
        keys = ["ts_ns"] + [c for c in ("known_ns", "arrival") if c in columns]
    return ", ".join([*(f'"{k}"' for k in keys), "filename", "file_row_number"])


def _read_parquet(path: Path, order: str, batch_rows: int) -> Iterator[dict[str, Any]]:
    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    files = [f for f in files if not f.name.startswith(".")]
    if not files:
        raise FeatureError(f"no Parquet events under {path}")
    con = duckdb().connect()
    try:
        scan = (f"read_parquet({[str(f) for f in files]!r}, union_by_name=true, hive_partitioning=true, "
                "filename=true, file_row_number=true)")
        columns = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()]
        if order != "input" and "ts_ns" not in columns and order == "event_time":
            raise FeatureError(f"events under {path} have no ts_ns column")
        sql = f"SELECT * FROM {scan} ORDER BY {_order_by(columns, order)}"
        result = con.execute(sql)
        while True:
            chunk = result.fetchmany(batch_rows)
            if not chunk:
                break
            for values in chunk:
                yield {k: v for k, v in zip(columns, values, strict=True) if v is not None and k not in _META}
    finally:
        con.close()


def _read_table(table: Any, order: str, batch_rows: int) -> Iterator[dict[str, Any]]:
    if order != "input":
        keys = ["known_ns", "arrival"] if order == "arrival" else ["ts_ns", "known_ns", "arrival"]
        keys = [k for k in keys if k in table.column_names]
        if keys:
            table = table.sort_by([(k, "ascending") for k in keys])  # stable: ties keep input order
    for batch in table.to_batches(max_chunksize=batch_rows):
        for row in batch.to_pylist():
            yield {k: v for k, v in row.items() if v is not None and k not in _META}


class _TimeRange:
    """Passes on only writes whose event time is in [start_ns, end_ns)."""

    __slots__ = ("end_ns", "inner", "start_ns")

    def __init__(self, inner: FeatureWriter, start_ns: int | None, end_ns: int | None) -> None:
        self.inner, self.start_ns, self.end_ns = inner, start_ns, end_ns

    def write(self, view: str, key: Any, values: Sequence[float] | np.ndarray,
              event_ns: int | None = None) -> None:
        if event_ns is not None and (
            (self.start_ns is not None and event_ns < self.start_ns)
            or (self.end_ns is not None and event_ns >= self.end_ns)
        ):
            return
        self.inner.write(view, key, values, event_ns)


def materialize(
    service: ServiceLike | str | Path,
    events: str | Path | Any | Iterable[Mapping[str, Any]],
    history_dir: str | Path,
    *,
    views: Sequence[str] | None = None,
    entity: str | None = None,
    key_field: str | None = None,
    online: FeatureWriter | None = None,
    known: Literal["event"] | int = "event",
    start_ns: int | None = None,
    end_ns: int | None = None,
    order: Literal["event_time", "arrival", "input"] = "event_time",
    clock: Clock | None = None,
) -> dict[str, Any]:
    """Replay ``events`` through the service's stream views into the history (and ``online``).

    ``views``: the stream views to compute (default: all).  ``entity``/``key_field``: apply
    every event to ``entity`` with its key in ``key_field`` (default: each event names its
    entities' keys under their names, as ``StreamProcessor.process`` expects).  Values with
    event times outside [``start_ns``, ``end_ns``) are computed (states need the earlier
    events) but not written.  Returns the processor's and writer's statistics."""
    spec, all_views = load_views(service)
    chosen = _stream_views(all_views, views)
    clock = clock or MonotonicClock()
    writer = HistoryWriter(history_dir, chosen, online, clock=clock, known=known)
    sink: FeatureWriter = writer
    if start_ns is not None or end_ns is not None:
        sink = _TimeRange(writer, start_ns, end_ns)
    config = msgspec.structs.replace(spec.stream, max_future=None, max_past=None)
    proc = StreamProcessor(chosen, sink, config, entities=spec.entities, clock=clock)
    if entity is not None:
        field = key_field or entity
        for ev in read_events(events, order=order):
            proc.apply(entity, ev.get(field), ev)
    else:
        for ev in read_events(events, order=order):
            proc.process(ev)
    writer.flush()
    return {"views": {n: v.version for n, v in chosen.items()}, "known": known,
            "stream": proc.statistics(), "history": writer.statistics()}


def backfill(
    service: ServiceLike | str | Path,
    events: str | Path | Any | Iterable[Mapping[str, Any]],
    history_dir: str | Path,
    *,
    run_ns: int | None = None,
    clock: Clock | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """``materialize`` with every value known at the run time (``run_ns``, default the
    clock's wall time now), so no training row labelled before the run can see it."""
    clock = clock or MonotonicClock()
    run = clock.wall_ns() if run_ns is None else run_ns
    return materialize(service, events, history_dir, known=run, clock=clock, **kwargs)


def _stream_views(views: Mapping[str, FeatureView], names: Sequence[str] | None) -> dict[str, FeatureView]:
    stream = {n: v for n, v in views.items()
              if v.spec.source is ViewSource.STREAM and v.transform is not None}
    if names is None:
        return stream
    unknown = [n for n in names if n not in stream]
    if unknown:
        raise FeatureError(f"not stream views with a transform: {unknown} (have {sorted(stream)})")
    return {n: stream[n] for n in names}
