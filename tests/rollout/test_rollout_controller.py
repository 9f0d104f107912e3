"""The guarded controller: bad canaries roll back on their own with the reason recorded and few
requests affected; healthy ones advance and promote; by-hand rollback; the state serialises."""

from __future__ import annotations

import msgspec
import numpy as np
from rolloutkit import GUARDS, canary_plan, candidate, traffic
from toyservice import CTX

from tailguard import Service
from tailguard.decision import Flag
from tailguard.rollout import EventKind, Guards, Phase, Rollout, RolloutState
from tailguard.rollout.router import Router
from tailguard.testing import FailingRuntime, FakeClock, SlowRuntime

STABLE_S = 100e-6  # the stable model's time per call on the fake clock; the bad canary's is 5x


def slow_stable(svc: Service, clock: FakeClock) -> None:
    m = svc.models["primary"]
    m.runtime = SlowRuntime(m.runtime, clock, STABLE_S)


def test_deployed_is_not_active_and_costs_nothing(svc: Service) -> None:
    r = Rollout(svc, canary_plan(0.5), candidate=candidate(svc))
    assert r.state.phase is Phase.DEPLOYED and not r.active
    assert r.predict == svc.engine.predict and r.predict_batch == svc.engine.predict_batch
    assert {r.predict(f"k{i}", CTX).model_version for i in range(200)} == {"primary/1"}


def test_canary_routes_its_share_to_the_candidate(svc: Service, clock: FakeClock) -> None:
    r = Rollout(svc, canary_plan(0.3), candidate=candidate(svc))
    r.start()
    ds = traffic(r, clock, 2000, keys=2000)
    versions = [d.model_version for d in ds]
    assert set(versions) == {"primary/1", "primary/2"}
    assert 0.25 < versions.count("primary/2") / len(versions) < 0.35
    assert r.candidate_requests == versions.count("primary/2")
    # Sticky: a key answered by the candidate once is answered by it again.
    again = {f"k{i}": r.predict(f"k{i}", CTX).model_version for i in range(200)}
    assert all(again[f"k{i}"] == versions[i] for i in range(200))


def test_a_5x_slower_canary_is_rolled_back_with_the_reason(svc: Service, clock: FakeClock) -> None:
    slow_stable(svc, clock)
    cand = candidate(svc)
    cand.runtime = SlowRuntime(cand.runtime, clock, 5 * STABLE_S)
    r = Rollout(svc, canary_plan(0.05, 0.25), candidate=cand)
    started = clock.now_ns()
    r.start()
    n = 20_000
    ds = traffic(r, clock, n, step_s=200e-6)
    assert r.state.phase is Phase.ROLLED_BACK and not r.active
    ev = r.events[-1]
    assert ev.kind is EventKind.ROLLED_BACK
    assert "p99 decision latency" in ev.reason and "300 us SLO" in ev.reason
    assert ev.figures["p99_latency_s"] > 300e-6
    assert (ev.at_ns - started) / 1e9 < 10.0
    affected = sum(d.model_version == "primary/2" for d in ds)
    assert affected == r.candidate_requests
    assert 0 < affected / n < 0.01
    # After the rollback every decision is the stable version's, through the engine itself.
    assert r.predict == svc.engine.predict
    assert {d.model_version for d in ds[-1000:]} == {"primary/1"}


def test_an_erroring_canary_is_rolled_back(svc: Service, clock: FakeClock) -> None:
    cand = candidate(svc)
    cand.runtime = FailingRuntime(cand.runtime, "raise")
    r = Rollout(svc, canary_plan(0.05), candidate=cand)
    r.start()
    n = 20_000
    ds = traffic(r, clock, n)
    assert r.state.phase is Phase.ROLLED_BACK
    ev = r.events[-1]
    assert "error rate 100.00%" in ev.reason
    assert ev.figures["error_rate"] == 1.0
    failed = sum(bool(d.flags & Flag.MODEL_FAILED) for d in ds)
    assert failed == r.candidate_requests and failed / n < 0.01
    # Every request was still answered (the fast rung below the candidate).
    assert all(d.rung == "fast" for d in ds if d.flags & Flag.MODEL_FAILED)


def test_fallback_guard_trips_when_the_candidate_is_skipped(svc: Service, clock: FakeClock) -> None:
    cand = candidate(svc)
    cand.runtime = SlowRuntime(cand.runtime, clock, 5e-3)  # over the 2 ms budget: skipped after learning
    guards = Guards(max_fallback_rate=0.05, min_window_samples=50)
    r = Rollout(svc, canary_plan(0.1, guards=guards), candidate=cand)
    r.start()
    traffic(r, clock, 5000)
    assert r.state.phase is Phase.ROLLED_BACK
    assert "fallback rate" in r.events[-1].reason


def test_a_healthy_canary_advances_and_promotes(svc: Service, clock: FakeClock) -> None:
    r = Rollout(svc, canary_plan(0.1, 0.5, min_samples=100, promote=True), candidate=candidate(svc))
    r.start()
    traffic(r, clock, 3000)
    assert [e.kind for e in r.events] == [EventKind.STARTED, EventKind.STAGE, EventKind.STAGE,
                                          EventKind.PROMOTED]
    assert r.state.phase is Phase.PROMOTED
    assert svc.engine.rungs[0].label == "primary/2" and svc.models["primary"].version == "2"
    assert r.predict == svc.engine.predict
    assert {r.predict(f"k{i}", CTX).model_version for i in range(100)} == {"primary/2"}


def test_stage_waits_for_its_minimum_duration(svc: Service, clock: FakeClock) -> None:
    plan = canary_plan(0.5, min_samples=1, promote=True)
    plan = msgspec.structs.replace(plan, stages=(msgspec.structs.replace(plan.stages[0], min_duration_s=5.0),
                                                 plan.stages[1]))
    r = Rollout(svc, plan, candidate=candidate(svc))
    r.start()
    traffic(r, clock, 400, step_s=10e-3)  # 4 s of fake time
    assert r.state.phase is Phase.ACTIVE
    clock.advance(1.0)
    r.drain()
    assert r.state.phase is Phase.PROMOTED


def test_promote_and_rollback_by_hand(svc: Service, clock: FakeClock) -> None:
    r = Rollout(svc, canary_plan(0.5), candidate=candidate(svc))
    r.start()
    traffic(r, clock, 200)
    ev = r.rollback("operator saw a bad dashboard")
    assert ev.kind is EventKind.ROLLED_BACK and ev.reason == "operator saw a bad dashboard"
    assert svc.engine.rungs[0].label == "primary/1"
    assert {r.predict(f"k{i}", CTX).model_version for i in range(200)} == {"primary/1"}

    r2 = Rollout(svc, canary_plan(0.5), candidate=candidate(svc))
    r2.start()
    r2.promote()
    assert svc.engine.rungs[0].label == "primary/2" and r2.state.phase is Phase.PROMOTED


def test_state_round_trips_through_json(svc: Service, clock: FakeClock) -> None:
    cand = candidate(svc)
    cand.runtime = FailingRuntime(cand.runtime, "raise")
    r = Rollout(svc, canary_plan(0.2), candidate=cand)
    r.start()
    traffic(r, clock, 2000)
    raw = msgspec.json.encode(r.state)
    back = msgspec.json.decode(raw, type=RolloutState)
    assert back == r.state and back.phase is Phase.ROLLED_BACK
    assert back.plan.stages[0].guards == GUARDS


def test_attached_to_the_service_the_side_path_drives_the_rollback(svc: Service, clock: FakeClock) -> None:
    cand = candidate(svc)
    cand.runtime = FailingRuntime(cand.runtime, "nan")
    r = Rollout(svc, canary_plan(0.2), candidate=cand)
    svc.attach(r)
    r.start()
    for i in range(2000):
        r.predict(f"k{i}", CTX)
        clock.advance(1e-3)
        svc.run_side_path(200e-6)
    assert r.state.phase is Phase.ROLLED_BACK and "error rate" in r.events[-1].reason
    svc.close()
    assert r.state.phase is Phase.ROLLED_BACK and len(r.events) == 2


def test_closing_an_active_rollout_rolls_it_back(svc: Service, clock: FakeClock) -> None:
    r = Rollout(svc, canary_plan(0.5), candidate=candidate(svc))
    r.start()
    r.close()
    assert r.state.phase is Phase.ROLLED_BACK and r.events[-1].reason == "rollout closed"
    assert r.predict == svc.engine.predict


def test_routed_calls_work_in_every_phase(svc: Service, clock: FakeClock) -> None:
    r = Rollout(svc, canary_plan(0.5), candidate=candidate(svc))
    assert r.predict_routed("client-1", "a", CTX).model_version == "primary/1"  # deployed: stable
    r.start()
    router = Router(0.5)
    for c in range(50):
        d = r.predict_routed(f"client-{c}", "a", CTX)
        assert (d.model_version == "primary/2") == router.to_candidate(f"client-{c}")
    r.rollback()
    assert r.predict_routed("client-1", "a", CTX).model_version == "primary/1"


def test_a_batch_routes_as_one_unit(svc: Service, clock: FakeClock) -> None:
    r = Rollout(svc, canary_plan(0.5), candidate=candidate(svc))
    r.start()
    router = Router(0.5)
    ctx = {"price": np.array([100.0, 104.5, 108.0]), "size": np.array([1.0, 3.0, 9.0])}
    for u in range(40):
        b = r.predict_batch_routed(f"user-{u}", ["a", "b", "zz"], ctx)
        assert b.model_version == ("primary/2" if router.to_candidate(f"user-{u}") else "primary/1")
    b = r.predict_batch(["a", "b", "zz"], ctx)  # by its first key
    assert b.model_version == ("primary/2" if router.to_candidate("a") else "primary/1")
    assert r.window.n == r.candidate_requests > 0


def test_canary_decisions_are_audited_with_their_own_rows_and_replay_exactly(
        svc: Service, clock: FakeClock, tmp_path) -> None:
    from tailguard.audit.log import AuditLog
    from tailguard.audit.replay import replay

    key = bytes(range(32))
    log = AuditLog.for_service(svc, tmp_path / "audit", key)
    svc.attach(log)
    r = Rollout(svc, canary_plan(0.5), candidate=candidate(svc))
    r.start()
    ds = traffic(r, clock, 400, keys=400)
    svc.run_side_path()
    log.close()
    assert {d.model_version for d in ds} == {"primary/1", "primary/2"}
    assert log.written == 400 and log.dropped == 0
    rep = replay(log.directory, key, svc)
    assert (rep.records, rep.equal, rep.different) == (400, 400, 0)
