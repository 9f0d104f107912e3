"""The ``tailguard rollout`` commands (registered by ``tailguard.cli``): the goal state in Redis.

    tailguard rollout status SERVICE_DIR --redis URL [--json]
    tailguard rollout shadow|canary|ab SERVICE_DIR --redis URL --model M --version V [--share S]
        [--p99-us N] [--max-error-rate R] [--max-fallback-rate R] [--max-divergence R]
        [--min-samples N] [--min-duration-s S] [--window-s S] [--promote-at-end]
        [--plan FILE [--stage N]] [--replace] [--expect-revision N] [--by WHO] [--reason TEXT]
    tailguard rollout promote|rollback SERVICE_DIR --redis URL [--expect-revision N] [--by WHO]
        [--reason TEXT]

``shadow``/``canary``/``ab`` declare a new rollout: a one-stage plan built from the options, or
``--plan`` (a JSON or TOML file holding a ``RolloutPlan``) started at ``--stage`` (whose kind
must be the command's).  The plan is validated against the loaded service (``PlanError``).  A
new rollout over an active one is refused unless ``--replace``; ``promote``/``rollback`` need
an active one (``GoalRefused``).  Every write is a compare-and-set against the revision read
(or ``--expect-revision``): when another operator changed the goal in between, the command
prints ``rollout_goal_conflict`` and changes nothing.  Errors exit 2 through ``tailguard.cli``.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import secrets
import socket
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from tailguard.rollout.goal import Goal, GoalPhase, GoalRefused, GoalStore
from tailguard.rollout.plan import Guards, PlanError, RolloutPlan, Stage, StageKind, parse_plan

__all__ = ["register_rollout"]


def register_rollout(sub: Any) -> None:
    """Add ``rollout`` and its subcommands to the top-level ``tailguard`` subparsers ``sub``."""
    ro = sub.add_parser("rollout", help="the rollout goal state in Redis: status, shadow, canary, ab, "
                                        "promote, rollback")
    rsub = ro.add_subparsers(dest="rollout_command", required=True)

    def common(p: argparse.ArgumentParser, write: bool = True) -> None:
        p.add_argument("service_dir")
        p.add_argument("--redis", required=True, help="the goal store, e.g. redis://127.0.0.1:6379/0")
        p.add_argument("--json", action="store_true", help="print the goal as JSON")
        if write:
            p.add_argument("--expect-revision", type=int, default=None,
                           help="refuse unless the goal is still at this revision (default: the one read)")
            p.add_argument("--by", default=None, help="who asks (default user@host)")
            p.add_argument("--reason", default="", help="why, recorded with the goal")

    st = rsub.add_parser("status", help="print the goal and its revision")
    common(st, write=False)
    st.set_defaults(fn=_status)
    for kind in (StageKind.SHADOW, StageKind.CANARY, StageKind.AB):
        what = "an A/B" if kind is StageKind.AB else f"a {kind.value}"
        p = rsub.add_parser(kind.value, help=f"declare a new rollout starting with {what} stage")
        common(p)
        p.add_argument("--model", help="the model rolled out")
        p.add_argument("--version", help="the candidate version")
        p.add_argument("--share", type=float, default=0.05, help="share of routing keys (default 0.05)")
        p.add_argument("--p99-us", type=float, default=None, help="guard: candidate p99 SLO in µs")
        p.add_argument("--max-error-rate", type=float, default=None, help="guard: error rate limit")
        p.add_argument("--max-fallback-rate", type=float, default=None, help="guard: fallback rate limit")
        p.add_argument("--max-divergence", type=float, default=None, help="guard: divergence limit")
        p.add_argument("--min-samples", type=int, default=0)
        p.add_argument("--min-duration-s", type=float, default=0.0)
        p.add_argument("--window-s", type=float, default=10.0)
        p.add_argument("--promote-at-end", action="store_true", help="add a promote stage after it")
        p.add_argument("--plan", default=None, help="a JSON or TOML RolloutPlan instead of the options")
        p.add_argument("--stage", type=int, default=0, help="with --plan: the stage to start at")
        p.add_argument("--replace", action="store_true", help="replace an active rollout")
        p.set_defaults(fn=_declare, kind=kind)
    for phase in (GoalPhase.PROMOTED, GoalPhase.ROLLED_BACK):
        name = "promote" if phase is GoalPhase.PROMOTED else "rollback"
        verb = "promote" if phase is GoalPhase.PROMOTED else "roll back"
        p = rsub.add_parser(name, help=f"{verb} the active rollout on every replica")
        common(p)
        p.set_defaults(fn=_finish, phase=phase)


def _who(args: argparse.Namespace) -> str:
    return str(args.by) if args.by else f"{getpass.getuser()}@{socket.gethostname()}"


def _service_name(service_dir: str) -> str:
    from tailguard.spec import load_spec

    return load_spec(service_dir).name


def _describe(goal: Goal) -> str:
    stage = goal.plan.stages[goal.stage] if 0 <= goal.stage < len(goal.plan.stages) else None
    at = datetime.datetime.fromtimestamp(goal.wall_ns / 1e9, datetime.UTC).isoformat(timespec="seconds")
    where = "" if stage is None else f", stage {goal.stage} ({stage.kind.value} {stage.share:.0%})"
    return (f"service:  {goal.service}\n"
            f"revision: {goal.revision} (epoch {goal.epoch})\n"
            f"rollout:  {goal.plan.model}/{goal.plan.version} (id {goal.rollout_id})\n"
            f"phase:    {goal.phase.value}{where}\n"
            f"by:       {goal.by or '-'} at {at}\n"
            f"reason:   {goal.reason or '-'}")


def _print(goal: Goal, as_json: bool) -> None:
    if as_json:
        print(json.dumps(msgspec.to_builtins(goal), sort_keys=True))
    else:
        print(_describe(goal))


def _status(args: argparse.Namespace) -> int:
    name = _service_name(args.service_dir)
    store = GoalStore(args.redis)
    try:
        goal = store.get(name)
    finally:
        store.close()
    if goal is None:
        print("null" if args.json else f"no rollout goal for {name}")
        return 0
    _print(goal, args.json)
    return 0


def _load_plan_file(path: str) -> RolloutPlan:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise PlanError(f"cannot read the plan {p}: {exc}") from exc
    if p.suffix == ".toml":
        try:
            return parse_plan(tomllib.loads(raw.decode()))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise PlanError(f"the plan {p} is not valid TOML: {exc}") from exc
    return parse_plan(raw)


def _plan_from(args: argparse.Namespace) -> tuple[RolloutPlan, int]:
    kind: StageKind = args.kind
    if args.plan is not None:
        plan = _load_plan_file(args.plan)
        if not 0 <= args.stage < len(plan.stages) or plan.stages[args.stage].kind is not kind:
            raise PlanError(f"--stage {args.stage}: the plan has no {kind.value} stage there")
        return plan, args.stage
    if not args.model or not args.version:
        raise PlanError(f"rollout {kind.value}: --model and --version are needed (or --plan)")
    guards = Guards(p99_latency_s=None if args.p99_us is None else args.p99_us * 1e-6,
                    max_error_rate=args.max_error_rate, max_fallback_rate=args.max_fallback_rate,
                    max_divergence=args.max_divergence)
    stages = [Stage(kind=kind, share=args.share, min_samples=args.min_samples,
                    min_duration_s=args.min_duration_s, guards=guards)]
    if args.promote_at_end:
        stages.append(Stage(kind=StageKind.PROMOTE))
    plan = RolloutPlan(model=args.model, version=args.version, stages=tuple(stages), window_s=args.window_s)
    return plan, 0


def _write(store: GoalStore, goal: Goal, current: Goal | None, args: argparse.Namespace) -> int:
    expect = args.expect_revision
    if expect is None:
        expect = 0 if current is None else current.revision
    stored = store.put(goal, expect)
    _print(stored, args.json)
    return 0


def _declare(args: argparse.Namespace) -> int:
    from tailguard.rollout.plan import validate_plan
    from tailguard.service import load_service

    plan, stage = _plan_from(args)
    svc = load_service(args.service_dir, freeze_gc=False)
    validate_plan(plan, svc)
    name = svc.spec.name
    store = GoalStore(args.redis)
    try:
        current = store.get(name)
        if current is not None and current.phase is GoalPhase.ACTIVE and not args.replace:
            raise GoalRefused(f"a rollout of {current.plan.model}/{current.plan.version} is active "
                              f"(revision {current.revision}, by {current.by or '-'}); promote or roll it "
                              "back first, or pass --replace")
        goal = Goal(service=name, plan=plan, rollout_id=secrets.token_hex(6), phase=GoalPhase.ACTIVE,
                    stage=stage, by=_who(args), reason=args.reason or f"{args.kind.value} started")
        return _write(store, goal, current, args)
    finally:
        store.close()


def _finish(args: argparse.Namespace) -> int:
    name = _service_name(args.service_dir)
    phase: GoalPhase = args.phase
    store = GoalStore(args.redis)
    try:
        current = store.get(name)
        if current is None or current.phase is not GoalPhase.ACTIVE:
            state = "no rollout goal" if current is None else f"the rollout is {current.phase.value}"
            raise GoalRefused(f"cannot {'promote' if phase is GoalPhase.PROMOTED else 'roll back'} "
                              f"{name}: {state}; nothing changed")
        goal = msgspec.structs.replace(current, phase=phase, by=_who(args), wall_ns=0,
                                       reason=args.reason or f"{phase.value} by hand")
        return _write(store, goal, current, args)
    finally:
        store.close()
