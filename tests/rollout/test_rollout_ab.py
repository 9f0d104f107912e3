"""A/B: deterministic assignment, exposure records, outcomes into the sequential test."""

from __future__ import annotations

import numpy as np
from rolloutkit import GUARDS, candidate
from toyservice import CTX

from tailguard import Service
from tailguard.rollout import EventKind, Rollout, RolloutPlan, Stage, StageKind
from tailguard.testing import FakeClock


def ab_plan(min_samples: int = 10_000) -> RolloutPlan:
    return RolloutPlan(model="primary", version="2", stages=(
        Stage(kind=StageKind.AB, share=0.5, min_samples=min_samples, guards=GUARDS),
        Stage(kind=StageKind.PROMOTE)))


def test_exposures_record_the_arm_that_answered(svc: Service, clock: FakeClock) -> None:
    r = Rollout(svc, ab_plan(), candidate=candidate(svc))
    r.start()
    ds = [r.predict(f"u{i}", CTX) for i in range(400)]
    ex = r.exposure_records()
    assert len(ex) == r.exposures_total == 400
    for e, d in zip(ex, ds, strict=True):
        assert e.model_version == d.model_version
        assert (e.arm == "B") == (d.model_version == "primary/2")
        assert r.arm_of(e.key) == e.arm  # deterministic assignment
    assert 150 < sum(e.arm == "B" for e in ex) < 250


def test_outcomes_feed_the_sequential_test_and_its_result_is_recorded(svc: Service, clock: FakeClock) -> None:
    r = Rollout(svc, ab_plan(min_samples=1000), candidate=candidate(svc))  # B decisions
    r.start()
    rng = np.random.default_rng(5)
    rejected = False
    for i in range(3000):
        key = f"u{i}"
        r.predict(key, CTX)
        lift = 0.5 if r.arm_of(key) == "B" else 0.0
        rejected = r.record_outcome(key, float(rng.normal(10.0 + lift, 2.0)))
        clock.advance(1e-3)
    assert rejected
    res = r.ab_result()
    assert res is not None and res.rejected and res.diff > 0 and res.p_value <= 0.05
    r.drain()
    stage_ev = next(e for e in r.events if e.kind is EventKind.STAGE)
    assert stage_ev.figures["ab_p_value"] == res.p_value
    assert r.events[-1].kind is EventKind.PROMOTED


def test_exposures_are_bounded(svc: Service, clock: FakeClock) -> None:
    r = Rollout(svc, ab_plan(), candidate=candidate(svc), exposure_capacity=16)
    r.start()
    for i in range(100):
        r.predict(f"u{i}", CTX)
    assert len(r.exposure_records()) == 16 and r.exposures_total == 100
    assert r.exposure_records()[-1].key == "u99"
