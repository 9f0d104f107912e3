"""Plan validation: clear errors naming the field, and an invalid plan changes nothing."""

from __future__ import annotations

import msgspec
import pytest
from rolloutkit import GUARDS, canary_plan
from toyservice import CTX

from tailguard import Service
from tailguard.rollout import Guards, PlanError, Rollout, RolloutPlan, Stage, StageKind, parse_plan
from tailguard.rollout.plan import validate_plan

SHADOW = Stage(kind=StageKind.SHADOW, share=0.1, guards=Guards(max_divergence=0.1))
CANARY = Stage(kind=StageKind.CANARY, share=0.05, guards=GUARDS)
PROMOTE = Stage(kind=StageKind.PROMOTE)


def plan(*stages: Stage, model: str = "primary", version: str = "2") -> RolloutPlan:
    return RolloutPlan(model=model, version=version, stages=stages)


def test_a_full_plan_parses_from_a_mapping_and_validates(svc: Service) -> None:
    p = parse_plan({
        "model": "primary", "version": "2", "window_s": 5.0,
        "stages": [
            {"kind": "shadow", "share": 0.1, "min_samples": 100, "guards": {"max_divergence": 0.1}},
            {"kind": "canary", "share": 0.05, "min_duration_s": 60, "guards": {"p99_latency_s": 0.0003}},
            {"kind": "canary", "share": 0.25, "guards": {"max_error_rate": 0.01}},
            {"kind": "promote"},
        ],
    })
    assert [s.kind for s in p.stages] == [StageKind.SHADOW, StageKind.CANARY, StageKind.CANARY,
                                          StageKind.PROMOTE]
    validate_plan(p, svc)


def test_parse_errors_name_the_field() -> None:
    with pytest.raises(PlanError, match=r"\$\.stages\[0\]\.kind"):
        parse_plan({"model": "primary", "version": "2", "stages": [{"kind": "blue-green"}]})
    with pytest.raises(PlanError, match="unknown field"):
        parse_plan({"model": "primary", "version": "2", "stages": [], "shares": 1})
    with pytest.raises(PlanError, match="not valid JSON"):
        parse_plan(b"{nope")


@pytest.mark.parametrize(("bad", "message"), [
    (plan(CANARY, model="nope"), r"\$\.model: the service declares no model 'nope'"),
    (plan(CANARY, version="9"), r"\$\.version: model 'primary' has no version '9'"),
    (plan(CANARY, version="1"), "primary/1 is already the active version"),
    (plan(msgspec.structs.replace(CANARY, share=1.5)), r"\$\.stages\[0\]\.share must be within 0\.\.1"),
    (plan(msgspec.structs.replace(CANARY, share=-0.1)), r"\$\.stages\[0\]\.share must be within 0\.\.1"),
    (plan(msgspec.structs.replace(CANARY, share=0.0)), "must be above 0 for a canary stage"),
    (plan(CANARY, SHADOW), r"\$\.stages\[1\]: a shadow stage cannot follow a canary stage"),
    (plan(PROMOTE, CANARY), "promote must be the last stage|cannot follow a promote"),
    (plan(msgspec.structs.replace(CANARY, share=0.25), CANARY), "canary shares only grow"),
    (plan(msgspec.structs.replace(CANARY, guards=None)),
     r"\$\.stages\[0\]\.guards: a canary stage needs guards"),
    (plan(msgspec.structs.replace(SHADOW, guards=Guards())), "needs guards with at least one limit"),
    (plan(msgspec.structs.replace(CANARY, guards=Guards(max_error_rate=2.0))),
     "max_error_rate must be a rate"),
    (plan(Stage(kind=StageKind.AB, share=1.0, guards=GUARDS)), "below 1 for an A/B stage"),
    (plan(), "at least one stage"),
    (msgspec.structs.replace(plan(CANARY), window_s=0.0), r"\$\.window_s must be > 0"),
])
def test_invalid_plans_are_refused_with_a_clear_message(svc: Service, bad: RolloutPlan, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        validate_plan(bad, svc)


def test_an_invalid_plan_leaves_the_active_version_untouched(svc: Service) -> None:
    rungs, models = svc.engine.rungs, dict(svc.models)
    hooks = svc.engine.hooks
    before = svc.engine.predict("a", CTX)
    with pytest.raises(PlanError):
        Rollout(svc, plan(CANARY, SHADOW))
    assert svc.engine.rungs is rungs and svc.models == models and svc.engine.hooks == hooks
    after = svc.engine.predict("a", CTX)
    assert after.model_version == before.model_version == "primary/1"
    assert after.output("p") == before.output("p")


def test_a_candidate_that_is_not_the_plans_version_is_refused(svc: Service) -> None:
    with pytest.raises(PlanError, match="the candidate given is primary/1"):
        Rollout(svc, canary_plan(0.1), candidate=svc.models["primary"])
