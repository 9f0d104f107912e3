"""Materialize and backfill replay events through the online stream code: online == offline, bit for bit."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow", reason="the history extra (pyarrow) is not installed")
pytest.importorskip("duckdb", reason="the history extra (duckdb) is not installed")
pq = pytest.importorskip("pyarrow.parquet")

from tailguard.features.history import HistoryWriter, backfill, load_views, materialize, training_set  # noqa: E402
from tailguard.features.history.layout import value_files  # noqa: E402
from tailguard.features.store import InMemoryOnlineStore  # noqa: E402
from tailguard.features.stream import StreamProcessor  # noqa: E402
from tailguard.features.transforms import load_module  # noqa: E402
from tailguard.testing import FakeClock  # noqa: E402

TRADING = Path(__file__).resolve().parents[2] / "examples" / "trading"
S = 1_000_000_000


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    """Ticks of 4 instruments over 2 minutes, bursts included, as the ingest worker sees them."""
    cols = load_module(str(TRADING), "ticks").generate_ticks(120.0, n_instruments=4, seed=3)
    names = ("ts_ns", "bid", "ask", "bid_size", "ask_size", "trade_size")
    rows = zip(cols["symbol"].tolist(), *(cols[n].tolist() for n in names), strict=True)
    return [{"instrument": sym, **dict(zip(names, vals, strict=True))} for sym, *vals in rows]


class Recorder:
    """The online store plus a copy of every row it holds right after each write (float32)."""

    def __init__(self, store: InMemoryOnlineStore) -> None:
        self.store = store
        self.rows: list[tuple[str, int, np.ndarray]] = []

    def write(
        self, view: str, key: Any, values: Sequence[float] | np.ndarray, event_ns: int | None = None
    ) -> None:
        self.store.write(view, key, values, event_ns)
        t = self.store.table(view)
        self.rows.append((key, int(t.event_ns[self.store.row("instrument", key)]),
                          t.f32[self.store.row("instrument", key)].copy()))


def run_online(events: list[dict[str, Any]], history_dir: Path | None = None) -> Recorder:
    """The online path; with ``history_dir``, a HistoryWriter tees writes and logs events."""
    spec, views = load_views(TRADING)
    rec = Recorder(InMemoryOnlineStore(views, spec.entities, clock=FakeClock()))
    live = None if history_dir is None else HistoryWriter(history_dir, views, rec, clock=FakeClock())
    proc = StreamProcessor(views, live or rec, spec.stream, entities=spec.entities)
    for ev in events:
        if live is not None:
            live.record_event(ev)
        proc.process(ev)
    if live is not None:
        live.flush()
    return rec


def history_rows(root: Path) -> pa.Table:
    _, views = load_views(TRADING)
    v = views["ticks"]
    return pa.concat_tables(pq.read_table(f) for f in value_files(root, v.name, v.version))


def f32_matrix(t: pa.Table) -> np.ndarray:
    _, views = load_views(TRADING)
    names = views["ticks"].field_names
    cols = [t.column(n if n in t.column_names else f"ticks.{n}").to_numpy() for n in names]
    return np.stack(cols, axis=1).astype(np.float32)


def test_every_value_materialized_equals_the_online_value_bit_for_bit(
    tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    online = run_online(events)
    pq.write_table(pa.Table.from_pylist(events), tmp_path / "ticks.parquet")
    report = materialize(TRADING, tmp_path / "ticks.parquet", tmp_path / "hist")
    offline = history_rows(tmp_path / "hist")
    assert report["stream"]["applied"] == len(events) and offline.num_rows == len(online.rows)
    assert offline.column("key").to_pylist() == [k for k, _, _ in online.rows]
    assert offline.column("event_ns").to_pylist() == [e for _, e, _ in online.rows]
    on = np.stack([v for _, _, v in online.rows])
    assert np.array_equal(f32_matrix(offline).view(np.uint32), on.view(np.uint32))


def test_a_training_set_at_the_end_equals_the_online_store_bit_for_bit(
    tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    online = run_online(events).store
    materialize(TRADING, events, tmp_path / "hist")
    keys = online.keys("instrument")
    end = max(e["ts_ns"] for e in events)
    t = training_set(tmp_path / "hist", {"instrument": keys, "ts_ns": [end] * len(keys)}, ["ticks"])
    on = np.stack([online.table("ticks").f32[online.row("instrument", k)] for k in keys])
    assert np.array_equal(f32_matrix(t).view(np.uint32), on.view(np.uint32))


def test_replaying_the_recorded_event_log_reproduces_the_online_writes(
    tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    online = run_online(events, tmp_path / "live")
    materialize(TRADING, tmp_path / "live" / "events", tmp_path / "replayed", order="arrival")
    replayed = history_rows(tmp_path / "replayed")
    on = np.stack([v for _, _, v in online.rows])
    assert np.array_equal(f32_matrix(replayed).view(np.uint32), on.view(np.uint32))
    assert np.array_equal(f32_matrix(history_rows(tmp_path / "live")).view(np.uint32), on.view(np.uint32))


def test_materialized_values_are_known_at_their_event_time(
    tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    materialize(TRADING, events[:500], tmp_path / "hist")
    t = history_rows(tmp_path / "hist")
    assert t.column("known_ns").to_pylist() == t.column("event_ns").to_pylist()


def test_a_backfill_is_known_at_its_run_time(tmp_path: Path, events: list[dict[str, Any]]) -> None:
    run = events[-1]["ts_ns"] + 3600 * S
    report = backfill(TRADING, events[:500], tmp_path / "hist", run_ns=run)
    assert report["known"] == run
    assert set(history_rows(tmp_path / "hist").column("known_ns").to_pylist()) == {run}


def test_a_backfill_window_writes_only_its_event_times_from_fully_warmed_states(
    tmp_path: Path, events: list[dict[str, Any]]
) -> None:
    start, end = events[0]["ts_ns"] + 60 * S, events[0]["ts_ns"] + 90 * S
    materialize(TRADING, events, tmp_path / "full")
    backfill(TRADING, events, tmp_path / "part", run_ns=end, start_ns=start, end_ns=end)
    full, part = history_rows(tmp_path / "full"), history_rows(tmp_path / "part")
    ev = np.array(full.column("event_ns").to_pylist())
    inside = full.filter(pa.array((ev >= start) & (ev < end)))
    assert part.num_rows == inside.num_rows > 0
    assert np.array_equal(f32_matrix(part).view(np.uint32), f32_matrix(inside).view(np.uint32))


def test_materialize_can_also_fill_an_online_store(tmp_path: Path, events: list[dict[str, Any]]) -> None:
    spec, views = load_views(TRADING)
    store = InMemoryOnlineStore(views, spec.entities, clock=FakeClock())
    materialize(TRADING, events, tmp_path / "hist", online=store)
    online = run_online(events).store
    keys = online.keys("instrument")
    a = np.stack([store.table("ticks").f32[store.row("instrument", k)] for k in keys])
    b = np.stack([online.table("ticks").f32[online.row("instrument", k)] for k in keys])
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
