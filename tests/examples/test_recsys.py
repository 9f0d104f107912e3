"""examples/recsys: tiny models trained into a copy of the example, then loaded and served."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from examplekit import replayed, run_json, run_report

from tailguard import Flag, ValidationError
from tailguard.service import Service

EXAMPLE = "recsys"
TRAIN_KWARGS = {"sessions": 12000, "scale": 0.5}  # tiny models, fit in seconds


@pytest.fixture
def served(trained: tuple[Path, dict[str, Any]], modules: tuple[Any, Any, Any]) -> tuple[Service, Any]:
    """The trained copy loaded, its catalog written and some traffic replayed."""

    def write_catalog(svc: Service, world: Any) -> None:
        svc.store.write_many("item_catalog", world.items, world.category.reshape(-1, 1).astype(np.float64))

    return replayed(trained[0], modules, 1500, before=write_catalog)


def test_replayed_features_are_bit_identical(trained: tuple[Path, dict[str, Any]],
                                             modules: tuple[Any, Any, Any]) -> None:
    events, train, _ = modules
    history = events.generate(events.make_world(seed=train.WORLD_SEED), 800, seed=3)
    x1, y1, _, cols = train.build_matrix(trained[0], history)
    x2, y2, _, _ = train.build_matrix(trained[0], history)
    assert x1.shape == (800 * history.slate.shape[1], len(cols))
    assert np.array_equal(x1.view(np.uint32), x2.view(np.uint32))
    assert np.array_equal(y1, y2)
    # The rows are not trivially constant: users and items accumulated state.
    assert np.unique(x1[:, cols.index("user_profile.ctr")]).size > 100
    assert np.unique(x1[:, cols.index("item_stats.distinct_users")]).size > 20


def test_ranker_beats_item_popularity_on_held_out_sessions(trained: tuple[Path, dict[str, Any]]) -> None:
    metrics = trained[1]
    assert metrics["ranker"]["valid_auc"] > 0.62
    assert metrics["ranker"]["valid_auc"] > metrics["baseline_item_ctr_auc"] + 0.02
    assert metrics["ranker_fast"]["valid_auc"] > metrics["baseline_item_ctr_auc"]


def test_predict_batch_scores_200_candidates(served: tuple[Service, Any]) -> None:
    svc, world = served
    user = world.users[int(np.argmax(world.activity))]  # the most active user: surely known
    d = svc.engine.predict_batch({"user": user, "item": world.items[:200]}, {"hour": 20.0, "mobile": 1})
    assert d.outputs.shape == (200, 1)
    assert np.all((d.outputs > 0.0) & (d.outputs < 1.0))
    assert d.rungs.tolist() == [0] * 200
    assert not np.any(d.flags & Flag.UNKNOWN_ENTITY)
    assert len(set(np.round(d.outputs[:, 0], 6).tolist())) > 20  # candidates are told apart


def test_unknown_user_and_item_get_defaults_and_are_flagged(served: tuple[Service, Any]) -> None:
    svc, world = served
    items = [*world.items[:9], "i_brand_new"]
    d = svc.engine.predict_batch({"user": "u_never_seen", "item": items}, {"hour": 9.0, "mobile": 0.0})
    assert np.all(d.flags & Flag.UNKNOWN_ENTITY)  # the user is unknown on every row
    cols = svc.engine.assembler.columns
    x = svc.engine.last_features(len(items))
    defaults = {f"user_profile.{f.name}": f.default for f in svc.spec.view("user_profile").fields}
    for name, value in defaults.items():
        assert np.all(x[:, cols.index(name)] == np.float32(value))
    assert x[-1, cols.index("item_catalog.category")] == -1.0  # the new item's catalog default
    assert x[0, cols.index("item_catalog.category")] == world.category[0]
    d2 = svc.engine.predict_batch({"user": world.users[int(np.argmax(world.activity))], "item": items},
                                  {"hour": 9.0, "mobile": 0.0})
    assert (d2.flags & Flag.UNKNOWN_ENTITY).tolist() == [0] * 9 + [int(Flag.UNKNOWN_ENTITY)]
    assert np.all(np.isfinite(d2.outputs))


@pytest.mark.parametrize("context", [
    {"hour": 9.0},                                   # missing field
    {"hour": "nine", "mobile": 0.0},                 # not a number
    {"hour": 9.0, "mobile": [0.0, 1.0, 1.0]},        # per-row value of the wrong length
    None,                                            # no context at all
])
def test_bad_context_is_a_validation_error(served: tuple[Service, Any], context: Any) -> None:
    svc, world = served
    with pytest.raises(ValidationError):
        svc.engine.predict_batch({"user": world.users[0], "item": world.items[:10]}, context)


def test_bad_keys_are_a_validation_error(served: tuple[Service, Any]) -> None:
    svc, world = served
    with pytest.raises(ValidationError):
        svc.engine.predict_batch({"item": world.items[:10]}, {"hour": 1.0, "mobile": 0.0})  # no user
    with pytest.raises(ValidationError):
        svc.engine.predict_batch({"user": 42, "item": world.items[:10]}, {"hour": 1.0, "mobile": 0.0})


def test_run_reports_latency_and_ranking_quality(trained: tuple[Path, dict[str, Any]],
                                                 modules: tuple[Any, Any, Any]) -> None:
    _, _, run = modules
    report = run_report(run, trained[0], requests=40, history_sessions=2000)
    assert report["requests"] == 40
    assert sum(report["rungs"].values()) == 40 * 200
    assert report["unknown_rows"]["flagged"] == report["unknown_rows"]["expected"]
    q = report["quality"]
    assert q["ndcg10_model"] > q["ndcg10_random"]
    assert "ranking quality" in run.format_report(report)


def test_run_json_prints_one_object_on_the_last_line(trained: tuple[Path, dict[str, Any]],
                                                     modules: tuple[Any, Any, Any],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    report = run_json(modules[2], trained[0], ["--requests", "10", "--history-sessions", "1000"], capsys)
    assert report["example"] == "recsys" and report["requests"] == 10
