"""examples/gaming: tiny models trained into a copy of the example, then loaded and served."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from examplekit import replayed, run_json, run_report

from tailguard import Flag, ValidationError
from tailguard.service import Service

EXAMPLE = "gaming"
TRAIN_KWARGS = {"matches": 800, "scale": 0.3}  # tiny models, fit in seconds


@pytest.fixture
def served(trained: tuple[Path, dict[str, Any]], modules: tuple[Any, Any, Any]) -> tuple[Service, Any]:
    """The trained copy loaded, with some play replayed."""
    return replayed(trained[0], modules, 300)


def _ctx(n: int | None = None) -> dict[str, Any]:
    if n is None:
        return {"ping_ms": 35.0, "match_kills": 6.0, "match_deaths": 4.0}
    return {"ping_ms": np.full(n, 35.0), "match_kills": np.arange(n) % 9, "match_deaths": np.full(n, 4.0)}


def test_replayed_features_are_bit_identical(trained: tuple[Path, dict[str, Any]],
                                             modules: tuple[Any, Any, Any]) -> None:
    events, train, _ = modules
    history = events.generate(events.make_world(seed=train.WORLD_SEED), 150, seed=3)
    x1, p1, cols = train.build_matrix(trained[0], history)
    x2, p2, _ = train.build_matrix(trained[0], history)
    assert x1.shape == (1500, len(cols))
    assert np.array_equal(x1.view(np.uint32), x2.view(np.uint32))
    assert np.array_equal(p1, p2)
    assert np.unique(x1[:, cols.index("combat.reaction_std")]).size > 100


def test_cheat_model_beats_the_kill_death_baseline_on_unseen_players(
    trained: tuple[Path, dict[str, Any]],
) -> None:
    metrics = trained[1]
    assert metrics["cheat"]["valid_auc"] > 0.8
    assert metrics["cheat"]["valid_auc"] > metrics["baseline_match_kd_auc"] + 0.15
    assert metrics["cheat_fast"]["valid_auc"] > metrics["baseline_match_kd_auc"] + 0.1


def test_predict_batch_scores_200_players(served: tuple[Service, Any]) -> None:
    svc, _ = served
    players = svc.store.keys("player")[:200]
    assert len(players) == 200
    d = svc.engine.predict_batch(players, _ctx(200), priority="bulk")
    assert d.outputs.shape == (200, 1)
    assert np.all((d.outputs >= 0.0) & (d.outputs <= 1.0))
    assert d.rungs.tolist() == [0] * 200
    assert not np.any(d.flags & Flag.UNKNOWN_ENTITY)


def test_unknown_player_gets_defaults_and_is_flagged(served: tuple[Service, Any]) -> None:
    svc, _ = served
    d = svc.engine.predict("p_never_seen", _ctx(), priority="bulk")
    assert d.flag & Flag.UNKNOWN_ENTITY
    assert d.rung == "primary"
    cols = svc.engine.assembler.columns
    x = svc.engine.last_features(1)[0]
    for view in ("combat", "inputs", "reports"):
        for f in svc.spec.view(view).fields:
            assert x[cols.index(f"{view}.{f.name}")] == np.float32(f.default)


def test_ladder_falls_back_to_the_last_good_answer_then_the_default(served: tuple[Service, Any]) -> None:
    svc, _ = served
    known = svc.store.keys("player")[0]
    first = svc.engine.predict(known, _ctx(), priority="bulk")
    # A budget no model fits in: the player's last answer, then (never answered) the default.
    again = svc.engine.predict(known, _ctx(), priority="bulk", budget_s=1e-9)
    assert again.rung == "last_good"
    assert again.outputs.tolist() == first.outputs.tolist()
    stranger = svc.engine.predict("p_no_answer_yet", _ctx(), priority="bulk", budget_s=1e-9)
    assert stranger.rung == "default"
    assert stranger.output("p_cheat") == pytest.approx(0.02)


@pytest.mark.parametrize("context", [
    {"ping_ms": 35.0, "match_kills": 6.0},                       # missing field
    {"ping_ms": 35.0, "match_kills": "six", "match_deaths": 4.0},  # not a number
    {"ping_ms": 35.0, "match_kills": True, "match_deaths": 4.0},   # a bool is not a number
    None,
])
def test_bad_context_is_a_validation_error(served: tuple[Service, Any], context: Any) -> None:
    svc, _ = served
    with pytest.raises(ValidationError):
        svc.engine.predict(svc.store.keys("player")[0], context)


def test_bad_key_type_is_a_validation_error(served: tuple[Service, Any]) -> None:
    svc, _ = served
    with pytest.raises(ValidationError):
        svc.engine.predict(12345, _ctx())


def test_run_reports_latency_and_detection_quality(trained: tuple[Path, dict[str, Any]],
                                                   modules: tuple[Any, Any, Any]) -> None:
    _, _, run = modules
    report = run_report(run, trained[0], requests=300, history_matches=300)
    assert report["requests"] == 300
    assert report["unknown_players"]["flagged"] == report["unknown_players"]["asked"]
    assert report["quality"]["auc_cheater"] > report["quality"]["auc_baseline_match_kd"]
    assert "cheat detection" in run.format_report(report)


def test_run_json_prints_one_object_on_the_last_line(trained: tuple[Path, dict[str, Any]],
                                                     modules: tuple[Any, Any, Any],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    report = run_json(modules[2], trained[0], ["--requests", "30", "--history-matches", "200"], capsys)
    assert report["example"] == "gaming" and report["requests"] == 30
