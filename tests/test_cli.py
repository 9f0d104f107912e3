"""The ``tailguard`` command: demo end to end, inspect, predict, and error exits.

One module-scoped copy of examples/trading (sources only, no models) is shared: the first
test that needs models trains them through the demo's own preparation step, as a fresh
checkout would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tailguard.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "trading"


@pytest.fixture(scope="module")
def trading(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trading example without trained artifacts."""
    dst = tmp_path_factory.mktemp("svc") / "trading"
    shutil.copytree(EXAMPLE, dst, ignore=shutil.ignore_patterns("models", "__pycache__", "runs"))
    assert not (dst / "models").exists()
    return dst


@pytest.fixture(scope="module")
def demo_run(trading: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    """`tailguard demo --seconds 2` on the copy (trains the models first: none exist)."""
    out = tmp_path_factory.mktemp("runs")
    rc = main(["demo", "--service", str(trading), "--seconds", "2", "--rate", "1000", "--out", str(out)])
    return rc, out


def _single_run_dir(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1
    return runs[0]


def test_demo_exits_zero_and_trains_missing_models(demo_run: tuple[int, Path], trading: Path) -> None:
    rc, _ = demo_run
    assert rc == 0
    assert (trading / "models" / "alpha" / "1" / "manifest.json").is_file()
    assert (trading / "models" / "alpha_fast" / "1" / "manifest.json").is_file()


def test_demo_writes_json_text_and_png(demo_run: tuple[int, Path]) -> None:
    run = _single_run_dir(demo_run[1])
    assert (run / "report.txt").read_text().startswith("stage")
    assert (run / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["stages"]) == {"ingest", "features", "inference", "delivery", "total"}
    for row in summary["stages"].values():
        assert row["p50_us"] <= row["p99_us"] <= row["p999_us"] <= row["p9999_us"] <= row["max_us"]


def test_demo_accounts_for_every_scheduled_decision(demo_run: tuple[int, Path]) -> None:
    summary = json.loads((_single_run_dir(demo_run[1]) / "summary.json").read_text())
    assert summary["decisions"] == 2000  # 2 s at 1000/s
    assert sum(r["answered"] for r in summary["ladder"].values()) == summary["decisions"]
    assert summary["stages"]["total"]["count"] == summary["decisions"]


def test_demo_chaos_window_makes_the_fast_rung_answer(demo_run: tuple[int, Path]) -> None:
    summary = json.loads((_single_run_dir(demo_run[1]) / "summary.json").read_text())
    ladder = summary["ladder"]
    assert ladder["fast"]["answered"] > 0
    # Every decision the primary did not answer was a budget skip, answered lower down.
    below = sum(v["answered"] for k, v in ladder.items() if k != "primary")
    assert ladder["primary"]["skipped_budget"] == below
    # ... and the primary came back after the slow window (probes in idle time).
    assert ladder["primary"]["answered"] > 0.6 * summary["decisions"]


def test_demo_reports_model_quality(demo_run: tuple[int, Path]) -> None:
    summary = json.loads((_single_run_dir(demo_run[1]) / "summary.json").read_text())
    q = summary["quality"]
    assert q["labelled_decisions"] > 0.9 * summary["decisions"]
    assert 0.0 <= q["auc"] <= 1.0


def test_engine_answer_equals_lightgbm_on_the_served_features(
    demo_run: tuple[int, Path], trading: Path
) -> None:
    # The wiring check: the decision must be exactly what LightGBM says for the feature
    # row the store and the request transform produce, columns in the manifest's order.
    lightgbm = pytest.importorskip("lightgbm")
    import numpy as np

    from tailguard.features.transforms import load_module
    from tailguard.service import load_service

    svc = load_service(trading, freeze_gc=False)
    ticks = load_module(str(trading), "ticks")
    cols = ticks.generate_ticks(40.0, seed=3)
    for ev in ticks.events(cols):
        svc.stream.apply("instrument", ev["symbol"], ev)
    ctx = {"bid": 100.0, "ask": 100.03, "bid_size": 250.0, "ask_size": 90.0}
    sym = str(cols["symbol"][-1])
    d = svc.engine.predict(sym, ctx)
    assert d.rung == "primary"
    stored = svc.store.table("ticks").f32[svc.store.row("instrument", sym)]
    quote = svc.views["quote"].transform
    spread, imbalance = quote(ctx["bid"], ctx["ask"], ctx["bid_size"], ctx["ask_size"])
    row = {f"ticks.{f}": float(v) for f, v in zip(svc.views["ticks"].field_names, stored, strict=True)}
    row.update({"quote.spread_bps": spread, "quote.imbalance": imbalance})
    m = svc.models["alpha"].manifest
    x = np.array([[row[c] for c in m.inputs]], dtype=np.float32)
    booster = lightgbm.Booster(model_file=str(trading / "models" / "alpha" / m.version / "model.txt"))
    assert d.output("p_up") == pytest.approx(float(booster.predict(x)[0]), abs=1e-6)


def test_inspect_prints_versions_of_loaded_service(
    demo_run: tuple[int, Path], trading: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["inspect", str(trading)]) == 0
    info = json.loads(capsys.readouterr().out)
    manifest = json.loads((trading / "models" / "alpha" / "1" / "manifest.json").read_text())
    assert info["models"]["alpha"]["content_hash"] == manifest["content_hash"]
    assert info["feature_views"]["ticks"]["version"] == manifest["feature_versions"]["ticks"]
    assert info["ladder"] == ["primary", "fast", "last_good", "default"]


def test_predict_unknown_instrument_is_flagged_not_an_error(
    demo_run: tuple[int, Path], trading: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    ctx = json.dumps({"bid": 99.99, "ask": 100.01, "bid_size": 300, "ask_size": 100})
    assert main(["predict", str(trading), "NOPE", "--context", ctx]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rung"] == "primary"
    assert "UNKNOWN_ENTITY" in out["flags"]
    assert 0.0 <= out["outputs"]["p_up"] <= 1.0


def test_predict_missing_context_exits_2_with_code(
    demo_run: tuple[int, Path], trading: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["predict", str(trading), "AAPL"]) == 2
    assert "[invalid_request]" in capsys.readouterr().err


def test_corrupt_model_fails_at_load_with_code(
    demo_run: tuple[int, Path], trading: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "trading"
    shutil.copytree(trading, broken, ignore=shutil.ignore_patterns("__pycache__"))
    so = broken / "models" / "alpha" / "1" / "model.onnx"
    data = bytearray(so.read_bytes())
    data[len(data) // 2] ^= 0xFF
    so.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["inspect", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "[model_load_failed]" in err
    assert "model.onnx" in err


def test_bad_spec_exits_2_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    svc = tmp_path / "svc"
    svc.mkdir()
    text = (EXAMPLE / "service.toml").read_text().replace('budget = "300us"', 'budget = "300 parsecs"')
    (svc / "service.toml").write_text(text)
    assert main(["inspect", str(svc)]) == 2
    err = capsys.readouterr().err
    assert "[spec_invalid]" in err
    assert "$.priorities[0].budget" in err
