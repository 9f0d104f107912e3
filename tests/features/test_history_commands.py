"""``tailguard features training-set | materialize | backfill | diff``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

pa = pytest.importorskip("pyarrow", reason="the history extra (pyarrow) is not installed")
pytest.importorskip("duckdb", reason="the history extra (duckdb) is not installed")
pq = pytest.importorskip("pyarrow.parquet")

from tailguard.cli import main  # noqa: E402
from tailguard.features.history import HistoryWriter, load_views  # noqa: E402
from tailguard.features.view import compile_views  # noqa: E402
from tailguard.spec import FeatureViewSpec, FieldSpec  # noqa: E402

TRADING = Path(__file__).resolve().parents[2] / "examples" / "trading"
S = 1_000_000_000
T0 = 1_700_000_000 * S


def tailguard_features(*argv: str) -> int:
    """Run ``tailguard features ARGV`` through the real command line, in process."""
    return main(["features", *argv])


def service_copy(tmp_path: Path, name: str) -> Path:
    """The trading service's spec and transforms (no models: replay needs only the views)."""
    d = tmp_path / name
    d.mkdir()
    for f in ("service.toml", "features.py", "ticks.py"):
        shutil.copy(TRADING / f, d / f)
    return d


def tick_events(n: int) -> list[dict[str, Any]]:
    return [
        {"instrument": "AAPL" if i % 2 else "MSFT", "ts_ns": T0 + i * S // 10, "bid": 100.0 + i * 0.01,
         "ask": 100.02 + i * 0.01, "bid_size": 5.0, "ask_size": 3.0 + i % 4, "trade_size": float(i % 3 - 1)}
        for i in range(n)
    ]


def test_diff_of_a_changed_window_names_the_window_and_the_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = service_copy(tmp_path, "a"), service_copy(tmp_path, "b")
    src = (b / "features.py").read_text()
    (b / "features.py").write_text(src.replace("INTENSITY_WINDOW_S = 5", "INTENSITY_WINDOW_S = 10"))
    assert tailguard_features("diff", str(a), str(b), "--view", "ticks") == 1
    out = capsys.readouterr().out.splitlines()
    assert "window trades: window_ns 5000000000 -> 10000000000" in out
    assert any(line.startswith("transform source: sha256 ") for line in out)
    assert any(line.startswith("version: ") for line in out)


def test_diff_of_the_same_version_finds_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = service_copy(tmp_path, "a")
    assert tailguard_features("diff", str(a), str(a), "--view", "ticks") == 0
    assert "no differences" in capsys.readouterr().out


def test_diff_reads_versions_kept_in_the_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v1 = compile_views((FeatureViewSpec(name="s", entity="u", fields=(FieldSpec(name="x"),)),))["s"]
    v2 = compile_views((FeatureViewSpec(
        name="s", entity="u", fields=(FieldSpec(name="x", dtype="float64"), FieldSpec(name="y", default=1.0))
    ),))["s"]
    HistoryWriter(tmp_path, {"s": v1})
    HistoryWriter(tmp_path, {"s": v2})
    rc = tailguard_features("diff", f"s@{v1.version}", f"s@{v2.version}", "--history", str(tmp_path),
                            "--json")
    changes = json.loads(capsys.readouterr().out)["changes"]
    assert rc == 1
    assert sorted(changes) == sorted([f"version: {v1.version} -> {v2.version}",
                                      "field added: y (float32, default 1.0)",
                                      "field x: dtype float32 -> float64"])


def test_materialize_then_training_set_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    svc = service_copy(tmp_path, "svc")
    pq.write_table(pa.Table.from_pylist(tick_events(50)), tmp_path / "ticks.parquet")
    hist = tmp_path / "hist"
    assert tailguard_features("materialize", str(svc), "--events", str(tmp_path / "ticks.parquet"),
                              "--history", str(hist), "--json") == 0
    assert json.loads(capsys.readouterr().out)["stream"]["applied"] == 50
    _, views = load_views(svc)
    manifest = tmp_path / "model" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"feature_versions": {n: v.version for n, v in views.items()}}))
    labels = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"instrument": ["AAPL", "MSFT"], "ts_ns": [T0 + 5 * S] * 2, "y": [1, 0]}), labels)
    out = tmp_path / "train.parquet"
    assert tailguard_features("training-set", str(hist), "--labels", str(labels),
                              "--manifest", str(manifest.parent), "--out", str(out)) == 0
    t = pq.read_table(out)
    assert t.column_names[:3] == ["instrument", "ts_ns", "y"] and "ticks.ret_1s" in t.column_names
    assert t.num_rows == 2


def test_backfill_from_the_command_line_records_its_run_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    svc = service_copy(tmp_path, "svc")
    pq.write_table(pa.Table.from_pylist(tick_events(20)), tmp_path / "ticks.parquet")
    run = T0 + 3600 * S
    assert tailguard_features("backfill", str(svc), "--events", str(tmp_path / "ticks.parquet"),
                              "--history", str(tmp_path / "hist"), "--run-ns", str(run)) == 0
    assert "known: " + str(run) in capsys.readouterr().out
    labels = {"instrument": ["AAPL", "AAPL"], "ts_ns": [run - 1, run]}
    pq.write_table(pa.table(labels), tmp_path / "labels.parquet")
    assert tailguard_features("training-set", str(tmp_path / "hist"), "--labels",
                              str(tmp_path / "labels.parquet"), "--views", "ticks", "--with-times",
                              "--out", str(tmp_path / "t.parquet")) == 0
    known = pq.read_table(tmp_path / "t.parquet").column("ticks.__known_ns").to_pylist()
    assert known == [None, run]  # not known a nanosecond before the run
