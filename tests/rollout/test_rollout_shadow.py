"""Shadow: replies never change, copies are bounded and dropped under load, comparisons are
summarised and feed the divergence and latency guards; canary comparisons against stable."""

from __future__ import annotations

import numpy as np
import pytest
from rolloutkit import candidate, traffic
from toyservice import CTX

from tailguard import Service
from tailguard.rollout import Guards, Phase, Rollout, RolloutPlan, Stage, StageKind
from tailguard.testing import FakeClock, SlowRuntime

LOOSE = Guards(max_divergence=1.0, divergence_tolerance=1.0)


def shadow_plan(share: float = 1.0, guards: Guards = LOOSE, min_samples: int = 10_000) -> RolloutPlan:
    return RolloutPlan(model="primary", version="2", stages=(
        Stage(kind=StageKind.SHADOW, share=share, min_samples=min_samples, guards=guards),))


def test_shadow_never_changes_replies(svc: Service, clock: FakeClock) -> None:
    r = Rollout(svc, shadow_plan(), candidate=candidate(svc))
    r.start()
    for i in range(300):
        key = ("a", "b", f"k{i}")[i % 3]
        d = r.predict(key, CTX)
        plain = svc.engine.predict(key, CTX)
        assert d.model_version == plain.model_version == "primary/1"
        assert np.array_equal(d.outputs, plain.outputs) and d.rung == plain.rung
        if i % 7 == 0:
            r.drain()
    assert r.candidate_requests == 0


def test_shadow_compares_and_summarises(svc: Service, clock: FakeClock) -> None:
    r = Rollout(svc, shadow_plan(), candidate=candidate(svc))
    cand_p = r.candidate_engine.predict("a", CTX).output("p")
    expected = abs(cand_p - svc.engine.predict("a", CTX).output("p"))
    assert expected > 0  # the two versions really differ
    r.start()
    for _ in range(20):
        r.predict("a", CTX)
    r.drain()
    s = r.mirror_summary()
    assert s is not None
    assert (s.offered, s.dropped, s.compared, s.failed) == (20, 0, 20, 0)
    assert s.mean_abs_diff == pytest.approx(expected) and s.max_abs_diff == pytest.approx(expected)
    assert s.over_tolerance_share == 0.0  # tolerance 1.0
    assert r.window.figures()["compared"] == 20


def test_shadow_copies_are_bounded_and_dropped_under_load(svc: Service, clock: FakeClock) -> None:
    r = Rollout(svc, shadow_plan(), candidate=candidate(svc), mirror_capacity=8)
    r.start()
    for i in range(100):  # no idle time: the side path never runs
        assert r.predict(f"k{i}", CTX).model_version == "primary/1"
    assert r.mirror is not None
    assert (r.mirror.offered, r.mirror.dropped, r.mirror.pending()) == (100, 92, 8)
    r.drain()
    s = r.mirror_summary()
    assert s is not None and s.compared == 8 and r.mirror.pending() == 0


def test_shadow_mirrors_its_share_of_keys(svc: Service, clock: FakeClock) -> None:
    r = Rollout(svc, shadow_plan(0.2), candidate=candidate(svc), mirror_capacity=10_000)
    r.start()
    for i in range(2000):
        r.predict(f"k{i}", CTX)
    assert r.mirror is not None and 0.15 < r.mirror.offered / 2000 < 0.25


def test_shadow_divergence_guard_rolls_back(svc: Service, clock: FakeClock) -> None:
    guards = Guards(max_divergence=0.05, divergence_tolerance=1e-9, min_window_samples=20)
    r = Rollout(svc, shadow_plan(guards=guards), candidate=candidate(svc))
    r.start()
    traffic(r, clock, 200)
    assert r.state.phase is Phase.ROLLED_BACK
    assert "diverges from the stable version" in r.events[-1].reason
    assert r.events[-1].figures["divergence"] > 0.05


def test_a_slow_shadow_candidate_is_caught_off_the_reply_path(svc: Service, clock: FakeClock) -> None:
    cand = candidate(svc)
    cand.runtime = SlowRuntime(cand.runtime, clock, 1e-3)
    r = Rollout(svc, shadow_plan(guards=Guards(p99_latency_s=300e-6, min_window_samples=20)), candidate=cand)
    r.start()
    ds = traffic(r, clock, 200)
    assert r.state.phase is Phase.ROLLED_BACK
    assert "p99 inference latency 1000 us" in r.events[-1].reason
    assert max(d.timings_ns[4] for d in ds) == 0  # the fake clock only moved between replies


def test_batch_shadow_keeps_replies_and_mirrors_rows(svc: Service, clock: FakeClock) -> None:
    r = Rollout(svc, shadow_plan(), candidate=candidate(svc))
    r.start()
    keys = ["a", "b", "zz"]
    ctx = {"price": np.array([100.0, 104.5, 108.0]), "size": np.array([1.0, 3.0, 9.0])}
    b = r.predict_batch(keys, ctx)
    plain = svc.engine.predict_batch(keys, ctx)
    assert np.array_equal(b.outputs, plain.outputs) and b.model_version == "primary/1"
    r.drain()
    s = r.mirror_summary()
    assert s is not None and s.compared == 3


def test_canary_divergence_is_measured_against_the_stable_version(svc: Service, clock: FakeClock) -> None:
    plan = RolloutPlan(model="primary", version="2", stages=(
        Stage(kind=StageKind.CANARY, share=0.5, guards=Guards(max_divergence=0.01, divergence_tolerance=1e-9,
                                                              min_window_samples=20)),))
    r = Rollout(svc, plan, candidate=candidate(svc))
    r.start()
    traffic(r, clock, 500)
    assert r.state.phase is Phase.ROLLED_BACK
    assert "diverges" in r.events[-1].reason
