"""Drift in a service directory: the ``[drift]`` spec section and its errors, ``tailguard drift
reference`` writing the reference from training rows, and a served app with ``[drift]``
enabled whose drift scores show up in its statistics and on /metrics."""

from __future__ import annotations

import asyncio
import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from inthread import InThreadServer
from toyservice import PRIMARY_INPUTS, render_spec, training_matrix

from tailguard.cli import main
from tailguard.errors import SpecError
from tailguard.observe.reference import Reference
from tailguard.serve.app import ServeConfig
from tailguard.spec import DriftSpec, load_spec, parse_spec

pytest.importorskip("river")


def with_drift(section: str) -> dict[str, Any]:
    return tomllib.loads(render_spec() + "\n[drift]\n" + section)


def test_the_drift_section_parses() -> None:
    spec = parse_spec(with_drift("""
enabled = true
window = 500
window_interval = "30s"
min_window = 100
detectors = ["adwin", "page_hinkley"]
psi = { alert = 0.3, clear = 0.2, enter_windows = 3 }
[[drift.sinks]]
kind = "webhook"
url = "http://127.0.0.1:9/hook"
timeout = "500ms"
[[drift.sinks]]
kind = "nats"
url = "nats://127.0.0.1:4222"
subject = "alerts.drift"
"""))
    d = spec.drift
    assert d.enabled and d.window == 500 and d.window_interval == 30.0 and d.psi.enter_windows == 3
    assert d.ks == DriftSpec().ks and [s.kind for s in d.sinks] == ["webhook", "nats"]
    assert d.sinks[0].timeout == 0.5


def test_drift_is_off_by_default() -> None:
    assert parse_spec(tomllib.loads(render_spec())).drift.enabled is False


@pytest.mark.parametrize(("section", "path"), [
    ("psi = { alert = 0.1, clear = 0.2 }", "$.drift.psi.clear"),
    ("window = 100\nmin_window = 200", "$.drift.min_window"),
    ("window = 5", "$.drift.window"),
    ('detectors = ["adwin", "adwin"]', "$.drift.detectors"),
    ('detectors = ["cusum"]', "$.drift.detectors[0]"),
    ('window_interval = "0s"', "$.drift.window_interval"),
    ("adwin_delta = 1.5", "$.drift.adwin_delta"),
    ("capacity = 8", "$.drift.capacity"),
    ("windw = 10", "$.drift"),
    ('sinks = [{ kind = "webhook", url = "ftp://x" }]', "$.drift.sinks[0].url"),
    ('sinks = [{ kind = "webhook" }]', "$.drift.sinks[0].url"),
    ('sinks = [{ kind = "nats", url = "http://x" }]', "$.drift.sinks[0].url"),
    ('sinks = [{ kind = "nats", url = "nats://x:1", subject = "a.*" }]', "$.drift.sinks[0].subject"),
    ('sinks = [{ kind = "log", url = "http://x" }]', "$.drift.sinks[0]"),
    ('sinks = [{ kind = "log", timeout = "0s" }]', "$.drift.sinks[0].timeout"),
    ('sinks = [{ kind = "pager" }]', "$.drift.sinks[0].kind"),
])
def test_bad_drift_sections_name_the_field(section: str, path: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(with_drift(section))
    assert info.value.path == path


# -- tailguard drift reference --------------------------------------------------------------------
def write_training(path: Path, n: int = 800) -> np.ndarray:
    """Training rows in the service's column names, as .npz (2-D + columns) or .csv."""
    x, _ = training_matrix(n, seed=4)
    if path.suffix == ".npz":
        np.savez(path, features=x, columns=np.array([*PRIMARY_INPUTS]))
    else:
        lines = [",".join(PRIMARY_INPUTS)]
        lines += [",".join("" if np.isnan(v) else repr(float(v)) for v in row) for row in x]
        path.write_text("\n".join(lines) + "\n")
    return x


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_the_reference_command_writes_the_spec_path(toy_copy: Path, tmp_path: Path, suffix: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / f"train{suffix}"
    x = write_training(data)
    assert main(["drift", "reference", str(toy_copy), "--data", str(data), "--bins", "8"]) == 0
    target = toy_copy / "reference" / "training.npz"
    assert str(target) in capsys.readouterr().out
    ref = Reference.load(target)
    assert ref.names == (*PRIMARY_INPUTS, "prediction.p") and ref.meta["rows"] == len(x)
    assert ref.bins == 8 and ref.meta["model"] == "primary/1" and ref.meta["service"] == "toy"
    assert set(ref.meta["feature_versions"]) == {"stats", "order"}
    psi, _ = ref.scores(np.hstack([x, np.full((len(x), 1), np.nan, np.float32)]))
    assert np.allclose(psi[:5], 0.0)  # the features are the training rows' own


def test_the_reference_command_reads_one_array_per_column(toy_copy: Path, tmp_path: Path) -> None:
    x, _ = training_matrix(300, seed=5)
    data = tmp_path / "cols.npz"
    np.savez(data, **{c: x[:, i] for i, c in enumerate(PRIMARY_INPUTS)}, unused=np.zeros(300))
    out = tmp_path / "elsewhere" / "ref.npz"
    assert main(["drift", "reference", str(toy_copy), "--data", str(data), "--out", str(out)]) == 0
    assert Reference.load(out).meta["rows"] == 300


def test_the_reference_command_names_missing_columns(toy_copy: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    x, _ = training_matrix(100, seed=6)
    data = tmp_path / "short.npz"
    np.savez(data, features=x[:, :3], columns=np.array([*PRIMARY_INPUTS[:3]]))
    assert main(["drift", "reference", str(toy_copy), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "[drift_reference_invalid]" in err and "order.notional" in err
    assert main(["drift", "reference", str(toy_copy), "--data", str(tmp_path / "none.csv")]) == 2
    assert "no training data" in capsys.readouterr().err


# -- a served app with [drift] --------------------------------------------------------------------
DRIFT = """
[drift]
enabled = true
window = 50
min_window = 10
window_interval = "1h"
detectors = ["adwin"]
"""


def test_a_served_app_with_drift_enabled_reports_its_scores(toy_copy: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.npz"
    write_training(data, 2000)
    assert main(["drift", "reference", str(toy_copy), "--data", str(data)]) == 0
    (toy_copy / "service.toml").write_text((toy_copy / "service.toml").read_text() + DRIFT)
    assert load_spec(toy_copy).drift.enabled
    # The drift monitor in process (a side process's is tested in test_sideproc.py).
    server = InThreadServer(toy_copy, ServeConfig(side_path_interval_s=3600.0, side_process=False))
    try:
        app = server.app
        assert app.drift is not None and app.drift in app.service.side_tasks
        conn = server.client()
        keys = [f"k{i}" for i in range(60)]
        body = {"inputs": [{"name": "item", "shape": [60], "datatype": "BYTES", "data": keys},
                           {"name": "price", "shape": [1], "datatype": "FP64", "data": [104.5]},
                           {"name": "size", "shape": [1], "datatype": "FP64", "data": [3.0]}]}
        conn.request("POST", "/v2/models/toy/infer", json.dumps(body).encode())
        r = conn.getresponse()
        assert r.status == 200, r.read()
        r.read()

        async def side_path() -> tuple[dict[str, float], dict[str, Any]]:  # on the app's own loop
            app.service.run_side_path()
            assert app.drift is not None
            return app.drift.drift_scores(), app.statistics()

        scores, stats = asyncio.run_coroutine_threadsafe(side_path(), server.loop).result(30)
        assert stats["drift"]["windows"] == 1 and stats["drift"]["recorded_rows"] == 60
        assert {f"psi:{c}" for c in PRIMARY_INPUTS} <= set(scores) and "ks:prediction.p" in scores
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        text = r.read().decode()
        assert r.status == 200
        assert 'tailguard_drift_score{metric="psi",signal="order.notional"' in text
    finally:
        server.close()


# -- the trading example --------------------------------------------------------------------------
TRADING = Path(__file__).resolve().parents[2] / "examples" / "trading"


def test_the_trading_example_trains_its_reference_and_monitors_drift(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from tailguard.features.transforms import load_module
    from tailguard.observe.drift import DriftMonitor
    from tailguard.service import load_service

    skip = shutil.ignore_patterns("models", "reference", "__pycache__", "runs")
    svc_dir = Path(shutil.copytree(TRADING, tmp_path / "trading", ignore=skip))
    spec = load_spec(svc_dir)
    assert spec.drift.enabled and spec.drift.sinks[0].kind == "log"
    train = load_module(str(svc_dir), "train")
    assert not train.up_to_date(svc_dir)
    monkeypatch.setattr(train, "TRAIN_SECONDS", 120.0)  # a shorter market: the same code, faster
    train.train(svc_dir, log=lambda line: None)
    assert train.up_to_date(svc_dir)  # models and reference agree: the demo will not retrain
    ref = Reference.load(svc_dir / spec.drift.reference)
    assert ref.meta["model"] == "alpha/1" and ref.outputs == ("p_up",) and ref.meta["rows"] == 50_000
    svc = load_service(svc_dir, freeze_gc=False)
    monitor = DriftMonitor.from_spec(svc, sinks=[])
    svc.attach(monitor)
    quote = {"bid": 100.0, "ask": 100.01, "bid_size": 100.0, "ask_size": 120.0}
    for i in range(spec.drift.min_window):
        svc.engine.predict(("AAPL", "MSFT", "NVDA")[i % 3], quote)
    svc.close()  # scores the last (partial) window
    scores = monitor.drift_scores()
    assert monitor.windows == 1
    assert {"psi:ticks.ret_1s", "ks:prediction.p_up", "adwin:prediction"} <= set(scores)
