"""The history writer: writes teed into the online store and buffered into Parquet, bitemporally."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow", reason="the history extra (pyarrow) is not installed")
pq = pytest.importorskip("pyarrow.parquet")

from tailguard.errors import FeatureError  # noqa: E402
from tailguard.features.history import HistoryWriter  # noqa: E402
from tailguard.features.history.layout import NS_PER_DAY, value_files  # noqa: E402
from tailguard.features.store import InMemoryOnlineStore  # noqa: E402
from tailguard.features.view import FeatureView, compile_views  # noqa: E402
from tailguard.spec import EntitySpec, FeatureViewSpec, FieldSpec  # noqa: E402
from tailguard.testing import FakeClock  # noqa: E402

ENTITIES = (EntitySpec(name="user"),)
SPEC = FeatureViewSpec(
    name="stats", entity="user", fields=(FieldSpec(name="x"), FieldSpec(name="n", dtype="int64"))
)
DAY0 = 19_000 * NS_PER_DAY  # 2022-01-08, midnight UTC


@pytest.fixture
def views() -> dict[str, FeatureView]:
    return compile_views((SPEC,))


def rows(root: Path, view: FeatureView) -> pa.Table:
    files = value_files(root, view.name, view.version)
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


def test_writes_reach_the_online_store_at_once_and_the_history_only_on_flush(
    tmp_path: Path, views: dict[str, FeatureView], clock: FakeClock
) -> None:
    store = InMemoryOnlineStore(views, ENTITIES, clock=clock)
    w = HistoryWriter(tmp_path, views, store, clock=clock)
    w.write("stats", "ann", [1.5, 2.0], event_ns=DAY0 + 5)
    assert store.read("stats", "ann").tolist() == (1.5, 2) and rows(tmp_path, views["stats"]) is None
    assert w.flush() == 1
    assert rows(tmp_path, views["stats"]).to_pylist() == [
        {"key": "ann", "event_ns": DAY0 + 5, "known_ns": clock.wall_ns(), "x": 1.5, "n": 2}
    ]


def test_rows_keep_the_declared_dtypes(tmp_path: Path, views: dict[str, FeatureView]) -> None:
    w = HistoryWriter(tmp_path, views, known=7)
    w.write("stats", "ann", [0.1, 3.0], event_ns=DAY0)
    w.flush()
    t = rows(tmp_path, views["stats"])
    assert (t.schema.field("x").type, t.schema.field("n").type) == (pa.float32(), pa.int64())
    assert t.column("x").to_numpy()[0] == np.float32(0.1)


def test_known_time_is_the_wall_clock_at_each_write(
    tmp_path: Path, views: dict[str, FeatureView], clock: FakeClock
) -> None:
    w = HistoryWriter(tmp_path, views, clock=clock)
    w.write("stats", "ann", [1.0, 1.0], event_ns=DAY0)
    first = clock.wall_ns()
    clock.advance(3.0)
    w.write("stats", "ann", [2.0, 2.0], event_ns=DAY0 + 1)
    w.flush()
    assert rows(tmp_path, views["stats"]).column("known_ns").to_pylist() == [first, first + 3_000_000_000]


def test_known_event_records_each_rows_event_time(tmp_path: Path, views: dict[str, FeatureView]) -> None:
    w = HistoryWriter(tmp_path, views, known="event")
    w.write("stats", "ann", [1.0, 1.0], event_ns=DAY0 + 11)
    w.flush()
    assert rows(tmp_path, views["stats"]).column("known_ns").to_pylist() == [DAY0 + 11]


def test_a_fixed_known_time_stamps_every_row(tmp_path: Path, views: dict[str, FeatureView]) -> None:
    w = HistoryWriter(tmp_path, views, known=DAY0 + 999)
    for i in range(3):
        w.write("stats", "ann", [i, i], event_ns=DAY0 + i)
    w.flush()
    assert rows(tmp_path, views["stats"]).column("known_ns").to_pylist() == [DAY0 + 999] * 3


def test_rows_are_partitioned_by_event_date(tmp_path: Path, views: dict[str, FeatureView]) -> None:
    w = HistoryWriter(tmp_path, views, known="event")
    w.write("stats", "ann", [1.0, 1.0], event_ns=DAY0 + 1)
    w.write("stats", "bob", [2.0, 2.0], event_ns=DAY0 + NS_PER_DAY + 1)
    w.flush()
    files = value_files(tmp_path, "stats", views["stats"].version)
    assert [f.parent.name for f in files] == ["dt=2022-01-08", "dt=2022-01-09"]
    assert [pq.read_table(f).column("key").to_pylist() for f in files] == [["ann"], ["bob"]]


def test_drain_writes_full_buffers_only(tmp_path: Path, views: dict[str, FeatureView]) -> None:
    w = HistoryWriter(tmp_path, views, known=1, capacity=4)
    for i in range(6):
        w.write("stats", f"k{i}", [i, i], event_ns=DAY0 + i)
    assert w.drain() == 4
    assert w.statistics()["buffered_rows"] == 2
    assert w.flush() == 2
    assert rows(tmp_path, views["stats"]).column("key").to_pylist() == [f"k{i}" for i in range(6)]


def test_too_many_pending_buffers_drop_history_rows_and_count_them(
    tmp_path: Path, views: dict[str, FeatureView], clock: FakeClock
) -> None:
    store = InMemoryOnlineStore(views, ENTITIES, clock=clock)
    w = HistoryWriter(tmp_path, views, store, known=1, capacity=2, max_pending=1)
    for i in range(6):
        w.write("stats", "ann", [i, i], event_ns=DAY0 + i)
    assert (w.statistics()["dropped"], store.writes) == (4, 6)
    w.flush()
    assert rows(tmp_path, views["stats"]).column("x").to_pylist() == [0.0, 1.0]


def test_events_are_logged_with_known_time_and_arrival_order(
    tmp_path: Path, views: dict[str, FeatureView], clock: FakeClock
) -> None:
    w = HistoryWriter(tmp_path, views, clock=clock)
    w.record_event({"user": "ann", "ts_ns": DAY0 + 2, "x": 1.0})
    clock.advance(1.0)
    w.record_event({"user": "bob", "ts_ns": DAY0 + 1, "x": 2.0})
    assert w.flush() == 2
    t = pa.concat_tables(pq.read_table(f) for f in sorted((tmp_path / "events").rglob("*.parquet")))
    got = sorted(t.to_pylist(), key=lambda r: r["arrival"])
    assert [(r["user"], r["arrival"], r["known_ns"] - got[0]["known_ns"]) for r in got] == [
        ("ann", 0, 0), ("bob", 1, 1_000_000_000)
    ]


def test_an_event_of_another_shape_does_not_fail_the_flush(
    tmp_path: Path, views: dict[str, FeatureView]
) -> None:
    w = HistoryWriter(tmp_path, views, known=5)
    w.record_event({"user": "ann", "ts_ns": DAY0, "x": 1.0})
    w.record_event({"user": "ann", "ts_ns": DAY0, "x": "oops"})
    assert w.flush() == 2
    assert len(list((tmp_path / "events").rglob("*.parquet"))) == 2


def test_each_view_version_is_described_once(tmp_path: Path, views: dict[str, FeatureView]) -> None:
    HistoryWriter(tmp_path, views)
    HistoryWriter(tmp_path, views)
    (path,) = (tmp_path / "versions" / "stats").glob("*.json")
    d = json.loads(path.read_text())
    assert (path.stem, d["version"], [f["name"] for f in d["schema"]["fields"]]) == (
        views["stats"].version, views["stats"].version, ["x", "n"]
    )


def test_a_missing_pyarrow_names_the_extra_to_install(
    tmp_path: Path, views: dict[str, FeatureView], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    with pytest.raises(FeatureError, match=r"pip install 'tailguard\[history\]'"):
        HistoryWriter(tmp_path, views)
