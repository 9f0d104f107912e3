"""``tailguard bench`` argument handling, output, and a run against a stub server."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from stubservers import StubWire

from tailguard.bench.cli import build, format_report, register

TRADING = Path(__file__).resolve().parents[2] / "examples" / "trading"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tailguard")
    register(ap.add_subparsers(dest="command", required=True))
    return ap


def test_a_target_and_a_mode_are_required() -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["bench", "--rate", "10"])
    with pytest.raises(SystemExit):
        parser().parse_args(["bench", "--tcp", "h:1"])
    with pytest.raises(SystemExit):
        parser().parse_args(["bench", "--tcp", "h:1", "--http", "h:2", "--rate", "1"])


def test_the_service_spec_supplies_names_budgets_and_context() -> None:
    args = parser().parse_args(["bench", "--http", "127.0.0.1:9", "--rate", "100", "--duration", "2",
                                "--service", str(TRADING), "--mix", "critical=1,bulk=3", "--poisson"])
    target, w, cfg = build(args)
    assert target.kind == "http" and (w.model, w.entity) == ("trading", "instrument")
    assert [(c.name, c.weight, c.budget_s) for c in w.mix.classes] == [("critical", 0.25, 300e-6),
                                                                      ("bulk", 0.75, 20e-3)]
    assert w.contexts == [{"bid": 1.0, "ask": 1.0, "bid_size": 1.0, "ask_size": 1.0}]
    assert len(w.keys) == 64
    assert (cfg.rate_hz, cfg.duration_s, cfg.poisson, cfg.progress) == (100.0, 2.0, True, True)


def test_without_a_mix_the_service_default_class_is_used() -> None:
    _, w, _ = build(parser().parse_args(["bench", "--http", "h:9", "--rate", "1", "--service", str(TRADING)]))
    assert [(c.name, c.budget_s) for c in w.mix.classes] == [("normal", 2e-3)]


def test_explicit_keys_context_and_budgets(tmp_path: Path) -> None:
    (tmp_path / "keys.txt").write_text("AAPL\nMSFT\n\n")
    args = parser().parse_args([
        "bench", "--unix", "/tmp/x.sock", "--sequential", "50", "--keys", f"@{tmp_path / 'keys.txt'}",
        "--context", '[{"a": 1}, {"a": 2}]', "--budgets", "critical=1ms", "--mix", "critical", "--json"])
    target, w, cfg = build(args)
    assert target.kind == "unix" and w.keys == ["AAPL", "MSFT"] and w.contexts == [{"a": 1}, {"a": 2}]
    assert w.mix.classes[0].budget_s == 1e-3 and cfg.requests == 50 and cfg.rate_hz == 0 and not cfg.progress


def test_a_run_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    with StubWire() as srv:
        args = parser().parse_args(["bench", "--tcp", srv.address, "--rate", "400", "--duration", "0.25",
                                    "--mix", "critical=0.5,normal=0.5", "--budgets", "critical=50ms",
                                    "--json"])
        assert args.fn(args) == 0
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert len(lines) == 1 and out.err == ""
    rep = json.loads(lines[0])
    assert rep["sent"] == 100 and rep["ok"] == 100
    assert set(rep["classes"]) == {"critical", "normal"}


def test_the_table_has_a_row_per_class(capsys: pytest.CaptureFixture[str]) -> None:
    with StubWire() as srv:
        args = parser().parse_args(["bench", "--tcp", srv.address, "--sequential", "100",
                                    "--mix", "critical,bulk", "--no-progress"])
        assert args.fn(args) == 0
    text = capsys.readouterr().out
    assert "critical" in text and "bulk" in text and "queue_full" in text and "all" in text


def test_an_unreachable_server_exits_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    args = parser().parse_args(["bench", "--tcp", "127.0.0.1:1", "--sequential", "1", "--context", "{}"])
    assert args.fn(args) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_format_report_of_an_open_run() -> None:
    lat = {"n": 1, "mean": 1.0, "p50": 1.0, "p90": 1.0, "p99": 12_000.0, "p999": 1.0, "p9999": 1.0,
           "max": 1.0}
    cls = {"budget_us": 300.0, "sent": 1, "ok": 1, "shed": 0, "errors": 0, "late": 0, "goodput_rps": 1.0,
           "latency_us": lat}
    text = format_report({"target": "tcp://h:1", "mode": "open", "arrivals": "fixed", "rate_hz": 10.0,
                          "duration_s": 1.0, "connections": 4, "classes": {"critical": cls}, "sent": 1,
                          "ok": 1,
                          "shed": 0, "errors": 0, "late": 0, "goodput_rps": 1.0, "latency_us": lat,
                          "statuses": {"ok": 1}, "throughput_rps": 1.0, "send_lag_us": lat, "aborted": None})
    assert "12.00ms" in text and "fixed 10/s for 1s (4 connections)" in text
