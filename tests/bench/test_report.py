"""The serving-run report helpers (bench.report): JSON rows, the text table, the output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tailguard.bench.report import budgets_us, emit_report, latency_us, rung_counts, table_header, table_row
from tailguard.spec import Budgets

ROW = {"p50_us": 10.04, "p99_us": 20.06, "p999_us": 30.0, "max_us": 41.26, "p9999_us": 35.0, "count": 7}


def test_latency_rows_keep_four_figures_to_a_tenth() -> None:
    assert latency_us({"total": ROW}) == {"total": {"p50_us": 10.0, "p99_us": 20.1, "p999_us": 30.0,
                                                    "max_us": 41.3}}


def test_budgets_are_microseconds_per_stage() -> None:
    b = budgets_us(Budgets())
    assert list(b) == ["ingest", "features", "inference", "delivery", "total"]
    assert (b["ingest"], b["total"]) == (50.0, 2000.0)


def test_rung_counts_name_each_rung() -> None:
    counts = np.array([3, 0], dtype=np.int64)
    assert rung_counts(("primary", "default"), counts) == {"primary": 3, "default": 0}


def test_table_rows_line_up_with_the_header() -> None:
    header = table_header("(us)")
    row = table_row("total", latency_us({"total": ROW})["total"], 2000.0)
    assert header.index("budget") + len("budget") == len(row)
    assert row.split() == ["total", "10.0", "20.1", "30.0", "41.3", "2000"]
    assert table_row("client", {"p50_us": 1.0, "p99_us": 2.0, "p999_us": 3.0}).split() == [
        "client", "1.0", "2.0", "3.0"]


def test_emit_prints_one_json_line_or_the_text(capsys: pytest.CaptureFixture[str]) -> None:
    emit_report({"a": 1}, True, lambda r: "text")
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"a": 1}
    emit_report({"a": 1}, False, lambda r: "text")
    assert capsys.readouterr().out == "text\n"
