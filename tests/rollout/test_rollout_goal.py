"""The rollout goal state in a real Redis: compare-and-set, replicas converging, catching up
after a late start and after a Redis restart, automatic rollbacks spread, the CLI."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from rolloutkit import GUARDS, canary_plan
from services import RedisServer, running_redis
from toyservice import CTX, feed

from tailguard import Service, load_service
from tailguard.cli import main
from tailguard.models.repository import LoadedModel
from tailguard.registry.swap import prepare_swap
from tailguard.rollout import (
    Goal,
    GoalConflict,
    GoalFollower,
    GoalPhase,
    GoalStore,
    GoalStoreUnavailable,
    Phase,
    Rollout,
    RolloutPlan,
)
from tailguard.testing import FailingRuntime, FakeClock

WAIT_S = 30.0  # generous: convergence is normally milliseconds


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path) as server:
        yield server


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[GoalStore]:
    s = GoalStore(redis_server.url, timeout_s=1.0)
    yield s
    s.close()


def replica(toy_dir: Path, staged_v2: Path, where: Path) -> Service:
    """One more loaded copy of the toy service serving primary/1, with primary/2 in its repository."""
    d = Path(shutil.copytree(toy_dir, where))
    s = load_service(d, clock=FakeClock(), freeze_gc=False)
    shutil.copytree(staged_v2, d / "models" / "primary" / "2")
    feed(s, "a")
    return s


@pytest.fixture
def replicas(toy_dir: Path, staged_v2: Path, tmp_path: Path) -> tuple[Service, Service]:
    return replica(toy_dir, staged_v2, tmp_path / "r1"), replica(toy_dir, staged_v2, tmp_path / "r2")


def light(svc: Service) -> Callable[[RolloutPlan], Rollout]:
    return lambda plan: Rollout(svc, plan, warmup=2)


def goal(svc: Service, plan: RolloutPlan | None = None, **kw: Any) -> Goal:
    return Goal(service=svc.spec.name, plan=plan or canary_plan(0.3, 0.6), rollout_id="r1", by="test", **kw)


def converge(followers: list[GoalFollower], done: Callable[[GoalFollower], bool]) -> None:
    """Run the followers' side paths until ``done`` holds for all (or fail after WAIT_S)."""
    end = time.monotonic() + WAIT_S
    while True:
        for f in followers:
            f.drain()
        if all(done(f) for f in followers):
            return
        assert time.monotonic() < end, [f.statistics() for f in followers]
        followers[0].watch.changed.wait(0.01)  # woken early by a new goal
        followers[0].watch.changed.clear()


def at(revision: int, epoch: str | None = None) -> Callable[[GoalFollower], bool]:
    return lambda f: f.applied is not None and f.applied.revision == revision and (
        epoch is None or f.applied.epoch == epoch)


def test_compare_and_set_refuses_a_stale_writer_and_changes_nothing(store: GoalStore, svc: Service) -> None:
    first = store.put(goal(svc), 0)
    assert (first.revision, len(first.epoch)) == (1, 16)
    with pytest.raises(GoalConflict, match=r"revision 1.*against revision 0") as err:
        store.put(goal(svc, phase=GoalPhase.ROLLED_BACK), 0)
    assert err.value.code == "rollout_goal_conflict"
    assert store.get(svc.spec.name) == first
    second = store.put(msgspec.structs.replace(first, phase=GoalPhase.PROMOTED), 1)
    assert (second.revision, second.epoch, second.phase) == (2, first.epoch, GoalPhase.PROMOTED)
    assert store.get(svc.spec.name) == second


def test_a_written_back_rollback_lands_on_a_goal_moved_on_meanwhile(store: GoalStore, svc: Service) -> None:
    g1 = store.put(goal(svc), 0)
    store.put(msgspec.structs.replace(g1, stage=1), 1)  # an operator moved on first
    watch = store.watch(svc.spec.name, poll_s=0.05)
    try:
        watch.submit(msgspec.structs.replace(g1, phase=GoalPhase.ROLLED_BACK, reason="guard"), 1)
        end = time.monotonic() + WAIT_S
        while not (watch.latest is not None and watch.latest.revision == 3):
            assert time.monotonic() < end
            watch.changed.wait(0.05)
            watch.changed.clear()
        latest = watch.latest
        assert (latest.phase, latest.stage, latest.reason) == (GoalPhase.ROLLED_BACK, 1, "guard")
        assert watch.conflicts == 1
    finally:
        watch.close()


def test_two_replicas_converge_on_stage_and_promotion(store: GoalStore,
                                                      replicas: tuple[Service, Service]) -> None:
    a, b = replicas
    fs = [GoalFollower(s, store, name=f"r{i}", make_rollout=light(s)) for i, s in enumerate(replicas)]
    try:
        g1 = store.put(goal(a), 0)
        converge(fs, at(1))
        for f in fs:
            assert f.rollout is not None and f.rollout.active and f.rollout.state.stage == 0
            assert f.last_error is None
        store.put(msgspec.structs.replace(g1, stage=1), 1)
        converge(fs, at(2))
        assert [f.rollout.state.stage for f in fs if f.rollout] == [1, 1]
        store.put(msgspec.structs.replace(g1, phase=GoalPhase.PROMOTED), 2)
        converge(fs, at(3))
        assert a.models["primary"].version == b.models["primary"].version == "2"
        assert {s.engine.predict("a", CTX).model_version for s in replicas} == {"primary/2"}
    finally:
        for f in fs:
            f.close()


def test_a_follower_started_after_the_change_catches_up(store: GoalStore, svc: Service) -> None:
    store.put(goal(svc), 0)
    f = GoalFollower(svc, store, make_rollout=light(svc))
    try:
        converge([f], at(1))
        assert f.rollout is not None and f.rollout.active
    finally:
        f.close()


def test_followers_catch_up_after_redis_restarts_empty(redis_server: RedisServer, store: GoalStore,
                                                       replicas: tuple[Service, Service]) -> None:
    fs = [GoalFollower(s, store, make_rollout=light(s), poll_s=0.1) for s in replicas]
    try:
        g1 = store.put(goal(replicas[0]), 0)
        converge(fs, at(1))
        redis_server.stop()
        with pytest.raises(GoalStoreUnavailable):
            store.put(msgspec.structs.replace(g1, phase=GoalPhase.ROLLED_BACK), 1)
        assert all(f.rollout is not None and f.rollout.active for f in fs)  # nothing changed meanwhile
        redis_server.start()
        # The restarted Redis is empty: the operator re-declares; a new epoch, revision 1 again.
        g2 = store.put(msgspec.structs.replace(g1, phase=GoalPhase.ROLLED_BACK, reason="redo"), 0)
        assert g2.epoch != g1.epoch
        converge(fs, at(1, g2.epoch))
        assert all(f.rollout is not None and f.rollout.state.phase is Phase.ROLLED_BACK for f in fs)
        assert all(f.watch.errors >= 1 for f in fs)  # each saw the connection drop
    finally:
        for f in fs:
            f.close()


def failing_candidate(svc: Service) -> Callable[[RolloutPlan], Rollout]:
    def make(plan: RolloutPlan) -> Rollout:
        prepared = prepare_swap(svc, plan.model, plan.version, warmup=2)
        prepared.warm.run_all()
        cand: LoadedModel = prepared.model
        cand.runtime = FailingRuntime(cand.runtime)
        return Rollout(svc, plan, candidate=cand)
    return make


def test_an_automatic_rollback_on_one_replica_rolls_back_all(store: GoalStore,
                                                            replicas: tuple[Service, Service]) -> None:
    a, b = replicas
    bad = GoalFollower(a, store, name="bad", make_rollout=failing_candidate(a))
    good = GoalFollower(b, store, name="good", make_rollout=light(b))
    fs = [bad, good]
    try:
        store.put(goal(a, plan=canary_plan(0.5, guards=GUARDS)), 0)
        converge(fs, at(1))
        assert bad.rollout is not None
        for i in range(400):
            bad.rollout.predict(f"k{i}", CTX)
        converge(fs, lambda f: f.rollout is not None and f.rollout.state.phase is Phase.ROLLED_BACK)
        assert bad.written_back == 1
        stored = store.get(a.spec.name)
        assert stored is not None and stored.phase is GoalPhase.ROLLED_BACK and stored.revision == 2
        assert "automatic rollback on bad" in stored.reason and "error rate" in stored.reason
        assert good.rollout is not None and "automatic rollback on bad" in good.rollout.events[-1].reason
    finally:
        for f in fs:
            f.close()


def test_cli_declares_promotes_and_refuses(redis_server: RedisServer, toy_copy: Path, staged_v2: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # With primary/2 in the repository the latest policy serves it; the rollout is to version 1.
    shutil.copytree(staged_v2, toy_copy / "models" / "primary" / "2")
    base = [str(toy_copy), "--redis", redis_server.url]
    assert main(["rollout", "status", *base]) == 0
    assert "no rollout goal" in capsys.readouterr().out
    assert main(["rollout", "canary", *base, "--model", "primary", "--version", "1", "--share", "0.1",
                 "--max-error-rate", "0.01", "--by", "alice", "--json"]) == 0
    declared = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (declared["revision"], declared["phase"], declared["by"]) == (1, "active", "alice")
    # A second rollout over the active one, and a stale writer: refused, nothing changed.
    assert main(["rollout", "ab", *base, "--model", "primary", "--version", "1", "--share", "0.1",
                 "--max-error-rate", "0.01"]) == 2
    assert "rollout_goal_refused" in capsys.readouterr().err
    assert main(["rollout", "promote", *base, "--expect-revision", "0", "--by", "bob"]) == 2
    assert "rollout_goal_conflict" in capsys.readouterr().err
    assert main(["rollout", "status", *base, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["revision"] == 1
    # Bad input: an invalid plan.
    assert main(["rollout", "canary", *base, "--model", "primary", "--version", "9"]) == 2
    assert "rollout_plan_invalid" in capsys.readouterr().err
    assert main(["rollout", "rollback", *base, "--reason", "bad numbers"]) == 0
    out = capsys.readouterr().out
    assert "revision: 2" in out and "rolled_back" in out and "bad numbers" in out
    assert main(["rollout", "promote", *base]) == 2
    assert "rollout_goal_refused" in capsys.readouterr().err
