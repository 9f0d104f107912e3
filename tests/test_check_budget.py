"""``tailguard check-budget``: the latency-budget gate (pass, fail naming the check, bad input).

Verdicts that depend on measured time run on a ``FakeClock``: the check advances it to each
request's intended time and a ``SlowRuntime`` advances it by an exact delay per model call,
so the figures judged are exact.  The command-line tests on the real clock use budgets
nothing can miss (a minute) or meet (one nanosecond for a model call).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from toyservice import LADDER_WITHOUT_DEFAULT, PRIMARY_INPUTS, render_spec, training_matrix, write_service

from tailguard import Service, load_service
from tailguard.checkbudget import BudgetCheckError, Options, check_budget, load_shift
from tailguard.checkbudget.workload import Workload
from tailguard.cli import main
from tailguard.observe.quality import auc
from tailguard.testing import FakeClock, SlowRuntime

GENEROUS = "\n[budgets]\n" + "".join(f'{s} = "60s"\n' for s in ("ingest", "features", "inference",
                                                                 "delivery", "total"))


def _with_budgets(directory: Path, budgets: str) -> Path:
    """The spec with ``budgets`` appended and the bulk class given a minute (edits a copy)."""
    spec = directory / "service.toml"
    text = spec.read_text().replace('budget = "20ms"', 'budget = "60s"')
    spec.write_text(text + budgets)
    return directory


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _fast(**kw: object) -> Options:
    """A short fake-clock run: 100 requests at 500/s."""
    return Options(rate_hz=500.0, seconds=0.2, **kw)  # type: ignore[arg-type]


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    x, y = training_matrix(2500, seed=11)  # more rows than one scoring chunk (1024)
    path = tmp_path / "labelled.npz"
    np.savez(path, X=x, y=y, columns=np.array(PRIMARY_INPUTS))
    return path


# -- verdicts on the fake clock ----------------------------------------------------------------
def test_instant_service_passes_every_check(service: Service) -> None:
    report = check_budget(service, _fast())
    assert report.exit_code == 0
    assert report.failed == []
    assert report.decisions == 100
    assert report.answered["primary"] == 100
    assert {c.name for c in report.checks} >= {"inference p99", "total p99", "deadline missed"}


def test_slow_primary_fails_the_inference_budget_only(service: Service, clock: FakeClock) -> None:
    primary = service.models["primary"]
    primary.runtime = SlowRuntime(primary.runtime, clock, 1.5e-3)  # default [budgets] inference: 1 ms
    report = check_budget(service, _fast(priority="bulk"))  # bulk: 20 ms, so primary always fits
    assert report.exit_code == 1
    assert [c.name for c in report.failed] == ["inference p99"]  # total 1.5 ms: within its 2 ms
    assert report.answered["primary"] == 100
    assert report.stages["inference"]["p99_us"] == pytest.approx(1500.0, rel=1e-3)
    assert report.stages["total"]["p99_us"] == pytest.approx(1500.0, rel=1e-3)
    assert "  - inference p99 1500us > 1000us" in report.table()


def test_response_over_the_class_budget_fails_end_to_end(service: Service, clock: FakeClock) -> None:
    primary = service.models["primary"]
    primary.runtime = SlowRuntime(primary.runtime, clock, 5e-3)
    # Critical: 500 us.  The first call is not expected to be slow, runs 5 ms and misses; the
    # ladder skips the primary from then on, but the two requests due meanwhile (at 2 and 4 ms)
    # start late and miss too.  Ten requests: the 5 ms one is the p99.
    report = check_budget(service, Options(rate_hz=500.0, seconds=0.02, priority="critical"))
    assert report.decisions == 10
    assert report.missed == 3
    names = [c.name for c in report.failed]
    assert names == ["inference p99", "total p99", "end-to-end p99 (response from intended)",
                     "deadline missed"]


def test_falling_behind_counts_from_the_intended_time(service: Service, clock: FakeClock) -> None:
    primary = service.models["primary"]
    primary.runtime = SlowRuntime(primary.runtime, clock, 3e-3)  # slower than the 2 ms between requests
    report = check_budget(service, _fast(priority="bulk"))
    # A request due while the one before still ran starts late; the wait counts in its response.
    assert report.stages["total"]["max_us"] == pytest.approx(3000.0, rel=1e-3)
    assert report.stages["response"]["max_us"] > 4000.0


def test_missed_deadlines_within_the_tolerance_pass(service: Service, clock: FakeClock) -> None:
    primary = service.models["primary"]
    primary.runtime = SlowRuntime(primary.runtime, clock, 0.6e-3)
    strict = check_budget(service, _fast(priority="critical"))
    assert "deadline missed" in [c.name for c in strict.failed]
    assert strict.missed == 1  # the first call; the ladder skips the primary after it
    lax = check_budget(service, _fast(priority="critical", max_missed=1.0))
    assert "deadline missed" not in [c.name for c in lax.failed]


def test_unanswered_requests_count_as_missed(toy_copy: Path, clock: FakeClock) -> None:
    write_service(toy_copy, spec_text=render_spec(ladder=LADDER_WITHOUT_DEFAULT))  # same views: models load
    svc = load_service(toy_copy, clock=clock, freeze_gc=False)
    for name in ("primary", "fast"):
        svc.models[name].runtime = SlowRuntime(svc.models[name].runtime, clock, 5e-3)
    report = check_budget(svc, _fast(priority="critical"))
    # Both models are skipped once known to be slow; entities they never answered have no
    # last good answer, and without a default rung nothing answers them.
    assert report.exhausted > 0
    assert report.decisions == 100
    assert report.missed >= report.exhausted
    assert "deadline missed" in [c.name for c in report.failed]
    assert f"{report.exhausted} unanswered" in report.table()


def test_batches_go_through_predict_batch(service: Service) -> None:
    report = check_budget(service, _fast(batch=8))
    assert report.exit_code == 0
    assert service.engine.statistics()["batch_rows"] == 800


# -- the shift ---------------------------------------------------------------------------------
def test_shift_moves_stored_features_and_context_as_declared(service: Service, tmp_path: Path) -> None:
    asm = service.engine.assembler
    path = _write(tmp_path / "shift.toml", "[stats.price_ewm]\nmean = 100.0\nstd = 2.0\n\n"
                  '["stats.last_size"]\noffset = 5.0\n\n[price]\nscale = 2.0\noffset = 10.0\n')
    shift = load_shift(path, asm.columns, asm.context_fields)
    plain = Workload(service, load_shift(_write(tmp_path / "none.toml", ""), asm.columns, asm.context_fields))
    moved = Workload(service, shift)
    keys = moved.entity_keys["item"]
    stored = service.store.read_many("stats", keys)
    assert float(stored["price_ewm"].mean()) == pytest.approx(100.0, abs=1e-3)
    assert float(stored["price_ewm"].std()) == pytest.approx(2.0, abs=1e-3)
    base = plain.rows["stats"][1]
    np.testing.assert_allclose(stored["last_size"], base[:, 2] + 5.0, rtol=1e-6)
    np.testing.assert_allclose(stored["count_10s"], base[:, 1], rtol=1e-6)  # not declared: unmoved
    np.testing.assert_allclose(moved.context_values["price"], plain.context_values["price"] * 2.0 + 10.0)
    np.testing.assert_allclose(moved.context_values["size"], plain.context_values["size"])


def test_shifted_values_reach_the_engine(service: Service, tmp_path: Path) -> None:
    path = _write(tmp_path / "shift.toml", "[stats.price_ewm]\nmean = 100.0\nstd = 0.0\n")
    report = check_budget(service, _fast(shift=path))
    assert report.shift == {"stats.price_ewm": {"mean": 100.0, "std": 0.0}}
    col = service.engine.assembler.column_index(["stats.price_ewm"])[0]
    assert service.engine.last_features(1)[0, col] == pytest.approx(100.0)
    assert report.exit_code == 0


# -- accuracy ----------------------------------------------------------------------------------
def test_accuracy_floor_passes_and_fails(service: Service, labelled: Path) -> None:
    ok = check_budget(service, _fast(data=labelled, accuracy_floor=0.6))
    assert ok.accuracy is not None and ok.accuracy["auc"] > 0.6
    assert ok.exit_code == 0
    bad = check_budget(service, _fast(data=labelled, accuracy_floor=0.999))
    assert [c.name for c in bad.failed] == ["accuracy (AUC)"]


def test_accuracy_is_the_primary_models_auc_on_every_row(service: Service, labelled: Path) -> None:
    with np.load(labelled) as z:
        x, y = np.ascontiguousarray(z["X"]), z["y"]
    direct = auc(y, service.models["primary"].runtime.run(x)[:, 0].copy())
    report = check_budget(service, _fast(data=labelled))
    assert report.accuracy is not None
    assert report.accuracy["rows"] == 2500
    assert report.accuracy["auc"] == pytest.approx(direct, abs=1e-9)


def test_accuracy_is_computed_on_shifted_rows(service: Service, labelled: Path, tmp_path: Path) -> None:
    plain = check_budget(service, _fast(data=labelled))
    path = _write(tmp_path / "shift.toml", "[stats.price_ewm]\nmean = 100.0\nstd = 0.0\n")
    shifted = check_budget(service, _fast(data=labelled, shift=path))
    assert plain.accuracy is not None and shifted.accuracy is not None
    assert shifted.accuracy["shifted_columns"] == ["stats.price_ewm"]
    assert shifted.accuracy["auc"] < plain.accuracy["auc"] - 0.05  # the price signal is gone


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[stats.price_ewm]\nmeen = 1.0\n", "unknown key"),
        ("[stats.nope]\nscale = 2.0\n", "not a feature column"),
        ("[nope]\nscale = 2.0\n", "neither a feature column"),
        ("[price]\nmean = 1.0\nscale = 2.0\n", "mixes"),
        ("[price]\nstd = -1.0\n", "std must be >= 0"),
        ("[price]\nscale = 'x'\n", "finite number"),
        ("[price\n", "not a TOML file"),
    ],
)
def test_bad_shift_files_are_refused(service: Service, tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path / "shift.toml", text)
    with pytest.raises(BudgetCheckError, match=message):
        check_budget(service, _fast(shift=path))


def test_unknown_class_is_refused(service: Service) -> None:
    with pytest.raises(BudgetCheckError, match="unknown priority class 'vip'"):
        check_budget(service, _fast(priority="vip"))


def test_missing_data_columns_are_refused(service: Service, tmp_path: Path) -> None:
    x, y = training_matrix(50, seed=1)
    path = tmp_path / "short.npz"
    np.savez(path, X=x[:, :4], y=y, columns=np.array(PRIMARY_INPUTS[:4]))
    with pytest.raises(BudgetCheckError, match=r"missing data column\(s\) \['order.ratio'\]"):
        check_budget(service, _fast(data=path, accuracy_floor=0.5))


def test_non_binary_labels_are_refused(service: Service, tmp_path: Path) -> None:
    x, _ = training_matrix(50, seed=1)
    path = tmp_path / "reg.npz"
    np.savez(path, X=x, y=np.linspace(0.0, 3.0, 50), columns=np.array(PRIMARY_INPUTS))
    with pytest.raises(BudgetCheckError, match="binary labels"):
        check_budget(service, _fast(data=path, accuracy_floor=0.5))


# -- the command -------------------------------------------------------------------------------
def _cli(directory: Path, *extra: str) -> int:
    return main(["check-budget", str(directory), "--rate", "200", "--seconds", "0.25",
                 "--priority", "bulk", *extra])


def test_cli_generous_budget_exits_zero_with_json_last(toy_copy: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rc = _cli(_with_budgets(toy_copy, GENEROUS), "--json")
    out = capsys.readouterr().out
    assert rc == 0
    assert "PASS" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["ok"] is True and summary["failed"] == []
    assert summary["decisions"] == 50
    assert set(summary["stages"]) == {"ingest", "features", "inference", "delivery", "total", "response"}


def test_cli_impossible_budget_exits_one_naming_the_stage(toy_copy: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    impossible = GENEROUS.replace('inference = "60s"', 'inference = "1ns"')  # no model call is that fast
    rc = _cli(_with_budgets(toy_copy, impossible))
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAIL: 1 check(s) failed" in out
    assert "  - inference p99" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--priority", "vip"), "unknown priority class"),
        (("--accuracy-floor", "0.7"), "--accuracy-floor needs --data"),
        (("--rate", "0"), "--rate must be > 0"),
    ],
)
def test_cli_bad_input_exits_two(toy_dir: Path, capsys: pytest.CaptureFixture[str],
                                 extra: tuple[str, ...], message: str) -> None:
    assert main(["check-budget", str(toy_dir), "--seconds", "0.1", *extra]) == 2
    err = capsys.readouterr().err
    assert "[check_budget_input]" in err and message in err


def test_cli_bad_shift_file_exits_two(toy_dir: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "shift.toml", "[stats.nope]\nscale = 2.0\n")
    assert main(["check-budget", str(toy_dir), "--seconds", "0.1", "--shift", str(path)]) == 2
    assert "not a feature column" in capsys.readouterr().err
