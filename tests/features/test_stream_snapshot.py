"""The stream processor's snapshot/restore (same further results, bit for bit) and its batched
flush (each view's changed rows in one ``write_many`` call)."""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from streamkit import AGG_MODULE, LAST, SUM, USERS, compile_agg

from tailguard.errors import FeatureError
from tailguard.features.store import InMemoryOnlineStore
from tailguard.features.stream import SNAPSHOT_VERSION, ProcessorSnapshot, StreamProcessor
from tailguard.features.transforms import load_module
from tailguard.features.view import FeatureView, compile_views
from tailguard.spec import StreamSpec, load_spec

TRADING = Path(__file__).resolve().parents[2] / "examples" / "trading"



def trading_ticks(seconds: float) -> tuple[Any, dict[str, FeatureView], list[dict[str, Any]]]:
    spec = load_spec(TRADING)
    views = compile_views(spec.feature_views, str(TRADING))
    cols = load_module(str(TRADING), "ticks").generate_ticks(seconds, n_instruments=4, seed=5)
    names = ("ts_ns", "bid", "ask", "bid_size", "ask_size", "trade_size")
    lists = {k: cols[k].tolist() for k in names}
    symbols = cols["symbol"].tolist()
    events = [{"instrument": s, **{k: lists[k][i] for k in names}} for i, s in enumerate(symbols)]
    return spec, views, events


def rows(store: InMemoryOnlineStore, view: str, entity: str) -> dict[Any, tuple[bytes, int]]:
    t = store.table(view)
    return {k: (t.values[store.row(entity, k)].tobytes(), int(t.event_ns[store.row(entity, k)]))
            for k in store.keys(entity)}


def test_snapshot_restore_gives_the_same_further_results_bit_for_bit() -> None:
    spec, views, events = trading_ticks(20.0)
    half = len(events) // 2
    store = InMemoryOnlineStore(views, spec.entities)
    a = StreamProcessor(views, store, spec.stream, entities=spec.entities)
    for seq, ev in enumerate(events[:half], 1):
        a.process(ev, seq=seq)
    snap = pickle.loads(pickle.dumps(a.snapshot()))  # through bytes, as the checkpoint keeps it
    restored_store = InMemoryOnlineStore(views, spec.entities)
    b = StreamProcessor(views, restored_store, spec.stream, entities=spec.entities)
    b.restore(snap)
    for seq, ev in enumerate(events[half:], half + 1):
        a.process(ev, seq=seq)
        b.process(ev, seq=seq)
    assert rows(restored_store, "ticks", "instrument") == rows(store, "ticks", "instrument")
    assert b.statistics() == a.statistics()
    assert b.max_ts_ns == a.max_ts_ns and b.last_seq == len(events)


def test_restore_marks_every_row_changed_so_the_next_flush_writes_it() -> None:
    spec, views, events = trading_ticks(5.0)
    first = InMemoryOnlineStore(views, spec.entities)
    a = StreamProcessor(views, first, spec.stream, entities=spec.entities)
    for ev in events:
        a.process(ev)
    store = InMemoryOnlineStore(views, spec.entities)
    b = StreamProcessor(views, store, spec.stream, entities=spec.entities, write_through=False)
    b.restore(a.snapshot())
    assert b.flush() == 4
    assert rows(store, "ticks", "instrument") == rows(first, "ticks", "instrument")


def processor(tmp_path: Path, store: Any = None, config: StreamSpec | None = None,
              module: str = AGG_MODULE) -> StreamProcessor:
    views = compile_agg(tmp_path, (SUM, LAST), module)
    return StreamProcessor(views, store if store is not None else InMemoryOnlineStore(views, USERS),
                           config or StreamSpec(event_id="id"), entities=USERS, write_through=False)


def test_a_snapshot_is_not_changed_by_later_events(tmp_path: Path) -> None:
    p = processor(tmp_path)
    p.process({"user": "a", "id": 1, "ts_ns": 1, "x": 2.0})
    snap = p.snapshot()
    p.process({"user": "a", "id": 2, "ts_ns": 2, "x": 3.0})
    assert snap.views["sums"].states["a"] == [2.0, 1.0]
    assert snap.views["sums"].last_ts == {"a": 1} and snap.event_ids == (1,)
    assert snap.version == SNAPSHOT_VERSION and snap.counters["applied"] == 1


def test_restored_event_ids_still_deduplicate(tmp_path: Path) -> None:
    p = processor(tmp_path)
    p.process({"user": "a", "id": "e1", "ts_ns": 1, "x": 2.0})
    q = processor(tmp_path)
    q.restore(p.snapshot())
    assert q.process({"user": "a", "id": "e1", "ts_ns": 2, "x": 2.0}) is not None
    assert q.statistics()["duplicate"] == 1 and q.statistics()["applied"] == 1


def test_restore_keeps_the_newest_ids_when_the_window_shrank(tmp_path: Path) -> None:
    p = processor(tmp_path)
    for i in range(5):
        p.process({"user": "a", "id": i, "ts_ns": i, "x": 1.0})
    q = processor(tmp_path, config=StreamSpec(event_id="id", dedupe_window=2))
    q.restore(p.snapshot())
    assert q.snapshot().event_ids == (3, 4)


def test_states_of_another_view_version_are_refused_and_nothing_changes(tmp_path: Path) -> None:
    p = processor(tmp_path)
    p.process({"user": "a", "id": 1, "ts_ns": 1, "x": 2.0})
    q = processor(tmp_path / "v2", module=AGG_MODULE + "\n# edited\n")
    with pytest.raises(FeatureError, match="version changed"):
        q.restore(p.snapshot())
    assert q.snapshot().views["sums"].states == {} and q.last_seq == 0


def test_a_snapshot_of_another_layout_version_is_refused(tmp_path: Path) -> None:
    p = processor(tmp_path)
    future = dataclasses.replace(p.snapshot(), version=SNAPSHOT_VERSION + 1)
    with pytest.raises(FeatureError, match="snapshot version"):
        processor(tmp_path).restore(future)


def test_a_view_missing_from_the_snapshot_starts_empty(tmp_path: Path) -> None:
    p = processor(tmp_path)
    p.process({"user": "a", "id": 1, "ts_ns": 1, "x": 2.0})
    snap = p.snapshot()
    partial = ProcessorSnapshot(version=snap.version, last_seq=snap.last_seq, max_ts_ns=snap.max_ts_ns,
                                views={"sums": snap.views["sums"]}, event_ids=(), counters={})
    q = processor(tmp_path)
    q.restore(partial)
    assert q.snapshot().views["last"].states == {} and q.snapshot().views["sums"].states == {"a": [2.0, 1.0]}


class CountingStore(InMemoryOnlineStore):
    """Counts row writes and batch writes."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.calls: list[tuple[str, int]] = []

    def write(self, view: str, key: Any, values: Any, event_ns: int | None = None) -> None:
        self.calls.append(("write", 1))
        super().write(view, key, values, event_ns)

    def write_many(self, view: str, keys: Sequence[Any], values: np.ndarray, event_ns: Any = None) -> None:
        self.calls.append((view, len(keys)))
        super().write_many(view, keys, values, event_ns)


def test_flush_writes_each_views_changed_rows_in_one_batch_call(tmp_path: Path) -> None:
    views = compile_agg(tmp_path, (SUM, LAST))
    store = CountingStore(views, USERS)
    p = StreamProcessor(views, store, StreamSpec(), entities=USERS, write_through=False)
    for i in range(30):
        p.process({"user": f"u{i % 3}", "ts_ns": 10 + i, "x": float(i)})
    assert p.flush() == 6
    assert sorted(store.calls) == [("last", 3), ("sums", 3)]
    assert list(store.read("sums", "u1")) == [sum(range(1, 30, 3)), 10.0]
    assert store.table("last").event_ns[store.row("user", "u2")] == 10 + 29
    assert p.flush() == 0 and len(store.calls) == 2  # nothing changed since


class RowStore:
    """A writer with no batch write: the processor falls back to one write per row."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, Any], tuple[list[float], int | None]] = {}

    def write(self, view: str, key: Any, values: Any, event_ns: int | None = None) -> None:
        self.rows[view, key] = (list(values), event_ns)


def test_flush_writes_row_by_row_to_a_store_without_a_batch_write(tmp_path: Path) -> None:
    store = RowStore()
    p = processor(tmp_path, store=store, config=StreamSpec())
    p.process({"user": "a", "ts_ns": 5, "x": 2.0})
    p.process({"user": "a", "ts_ns": 6, "x": 3.0})
    assert p.flush() == 2
    assert store.rows == {("sums", "a"): ([5.0, 2.0], 6), ("last", "a"): ([3.0], 6)}
