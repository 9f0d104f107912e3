"""Rollout: the tail latency of decisions while a model version is hot-swapped in process.

What it measures.  A copy of the trading example (``examples/trading``) is loaded the
documented serving way (``load_service``, ``tailguard.tune_gc()``) with ``alpha`` version 1;
a version 2 (the same artifacts, relabelled: the swap's cost is what is measured, not a
different model's speed) is then added to the copy's repository.  The main thread is the
engine's owner: it scores ``--rate`` decisions per second open-loop (``bench.openloop``:
latency from each decision's *intended* time, so a stall delays every decision behind it) on
the ``critical`` class and does side-path work in the idle gaps (``Service.run_side_path``,
which also drains the ``OwnerInbox`` attached to the service).  Every ``--period`` seconds a
second thread calls ``registry.swap.swap_model(..., owner=inbox)`` to the other version
(1 -> 2 -> 1 ...): it loads and verifies the version (hashes, signature policy, feature
versions) on its own thread, then the owner runs the warm-up (the spec's 200 inferences per
batch size 1, 8 and 64) one inference at a time in its idle gaps, and the switch.

Windows.  A swap window runs from the start of a swap to ``--after`` seconds past its switch,
reported whole and in three parts (``load`` on the swapping thread, ``warm_switch`` in the
owner's idle time, ``after`` the switch); the calm window is the ``--calm`` seconds before
each swap starts.
Latency percentiles are pooled over all swap windows and over all calm windows (µs, from the
intended time).  ``swap_failed_requests`` counts decisions in swap windows that raised or were
flagged MODEL_FAILED; fallbacks (a lower rung answered) are reported separately.

``--no-swap`` measures the same windows with no swap in them (a 50 ms pause of the second
thread stands for one): on a shared machine the ratio's noise floor.

Bad canary (``--canary-seconds``, 0 to skip).  Two more runs, each on a fresh copy of the
service: a ``tailguard.rollout.Rollout`` deploys ``alpha`` version 2 next to version 1 and
starts a canary at 5% of routing keys (10,000 simulated clients, ``route_key``) under guards
(p99 decision latency SLO, error rate <= 1%, judged once a window holds 50 candidate
decisions), attached to the service so its controller runs in the owner's idle gaps.  The
candidate is bad: **slow** — every call spins until it has taken 5x the stable version's
mean time — or **erroring** — every call raises.  The SLO is the stable version's calm p99
decision time (measured first, 1 s) plus twice its mean inference time, so the slow
candidate's extra 4x inference breaks it.  ``bad_canary_rollback_s``: the worse of the two
times from activation to the automatic rollback (engine clock); ``bad_canary_affected_fraction``:
the worse of the two shares of decisions answered by the candidate among all decisions in
the ``--canary-seconds`` window after activation (the issue's target: within 10 s, < 1%).

Replica convergence (``--converge-changes``, 0 to skip; needs ``redis-server`` on PATH or
``--redis URL``).  Two more copies of the service, each a replica with a
``rollout.GoalFollower`` on a shared ``rollout.GoalStore`` (Redis), both run by the main thread
as their owners would (``drain`` on the side path).  The goal changes ``N`` times, cycling
through: declare a canary of ``alpha/2`` (a new rollout: each replica loads, verifies and warms
the candidate), move it to its second and third stage, roll it back.  ``replica_converge_s``:
the median time from the compare-and-set ``put`` to both replicas having applied that
revision (``replica_converge_max_s`` the worst; per kind in ``replica_converge_by_change``).
Both replicas share one thread here, so a declare's two candidate loads run one after the
other: pessimistic for that kind.  The issue's target: within 1 s.

Run: ``.venv/bin/python benchmarks/rollout.py`` (a table), ``--json`` (table to stderr, the
last stdout line is one JSON object).  Targets are printed as PASS/FAIL lines; they never
change the exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

import tailguard
from tailguard.bench.openloop import Pacer, fixed_rate
from tailguard.decision import Flag
from tailguard.features.online.server import LocalRedis
from tailguard.models.manifest import read_manifest, write_manifest
from tailguard.registry.owner import OwnerInbox
from tailguard.registry.swap import SwapReport, prepare_swap, swap_model
from tailguard.rollout import (
    EventKind,
    Goal,
    GoalFollower,
    GoalPhase,
    GoalStore,
    Guards,
    Rollout,
    RolloutPlan,
    Stage,
    StageKind,
)
from tailguard.testing import FailingRuntime

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support.example import SERVICE_DIR, ensure_models, example_module

MODEL = "alpha"
TARGETS = (
    # (name, limit, description)
    ("swap_failed_requests", 0, "no decision fails across a swap"),
    ("swap_p999_over_calm_p999", 1.5, "p99.9 in swap windows <= 1.5 x calm p99.9"),
    ("bad_canary_rollback_s", 10.0, "a slow or erroring canary is rolled back within 10 s"),
    ("bad_canary_affected_fraction", 0.01, "... with < 1% of requests affected"),
    ("replica_converge_s", 1.0, "two replicas agree on a goal change within 1 s (median)"),
)


def prepare_copy(workdir: Path) -> Path:
    """Copy the example service (models included) into ``workdir``."""
    dst = workdir / "trading"
    shutil.copytree(SERVICE_DIR, dst, ignore=shutil.ignore_patterns("__pycache__", "runs", ".tailguard"))
    for other in sorted((dst / "models" / MODEL).iterdir()):
        if other.name != "1":
            shutil.rmtree(other)
    return dst


def add_version_2(service_dir: Path) -> None:
    """``alpha/2``: version 1's artifacts under a new label (after the service loaded v1)."""
    d = Path(shutil.copytree(service_dir / "models" / MODEL / "1", service_dir / "models" / MODEL / "2"))
    write_manifest(d, msgspec.structs.replace(read_manifest(d), version="2"))


def quotes_from_history(svc: Any, seconds: float, seed: int) -> dict[str, dict[str, float]]:
    """Replay ``seconds`` of generated ticks into the store; the last quote per symbol."""
    ticks = example_module("ticks")
    events = ticks.events(ticks.generate_ticks(seconds, seed=seed))
    entity = svc.spec.entities[0].name
    quotes: dict[str, dict[str, float]] = {}
    for ev in events:
        svc.stream.apply(entity, ev["symbol"], ev)
        quotes[ev["symbol"]] = {k: ev[k] for k in ("bid", "ask", "bid_size", "ask_size")}
    return quotes


def pct(lat_ns: np.ndarray, q: float) -> float:
    """Percentile in µs (NaN for no samples)."""
    return float(np.percentile(lat_ns, q) / 1e3) if len(lat_ns) else float("nan")


def staged_service(workdir: Path, args: argparse.Namespace) -> tuple[Any, dict[str, Any], list[str]]:
    """A copy of the trading example in ``workdir`` with version 2 of ``alpha`` staged beside
    the serving version 1, loaded, fed ``args.history`` ticks; its quotes and their symbols."""
    service_dir = prepare_copy(workdir)
    svc = tailguard.load_service(service_dir)
    add_version_2(service_dir)
    quotes = quotes_from_history(svc, args.history, args.seed)
    return svc, quotes, sorted(quotes)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One benchmark run; returns the summary."""
    ensure_models()
    workdir = Path(tempfile.mkdtemp(prefix="tailguard-rollout-"))
    try:
        svc, quotes, symbols = staged_service(workdir, args)
        inbox = OwnerInbox()
        svc.attach(inbox)
        svc.run_side_path()
        tailguard.tune_gc()

        n = int(args.seconds * args.rate)
        start = time.perf_counter_ns() + 50_000_000
        intended = fixed_rate(start, args.rate, n)
        ends = np.zeros(n, dtype=np.int64)
        failed = np.zeros(n, dtype=bool)
        rung = np.zeros(n, dtype=np.int8)
        swap_at = [start + int((args.first + k * args.period) * 1e9)
                   for k in range(int((args.seconds - args.first - args.after) // args.period) + 1)]
        prepared_from: list[int] = []
        switched: list[int] = []
        reports: list[SwapReport] = []
        errors: list[BaseException] = []

        def swapper() -> None:
            version = "1"
            for t in swap_at:
                while time.perf_counter_ns() < t:
                    time.sleep(0.005)
                version = "2" if version == "1" else "1"
                prepared_from.append(time.perf_counter_ns())
                if args.no_swap:  # the same windows with nothing in them: the noise baseline
                    time.sleep(0.05)
                    switched.append(time.perf_counter_ns())
                    continue
                try:
                    reports.append(swap_model(svc, MODEL, version, owner=inbox, timeout_s=10.0))
                except BaseException as exc:
                    errors.append(exc)
                    return

        def idle(budget_s: float) -> int:
            return svc.run_side_path(budget_s)

        pacer = Pacer(idle)
        engine = svc.engine
        predict = engine.predict
        label = engine.rungs[0].label
        now = time.perf_counter_ns
        failed_flag = int(Flag.MODEL_FAILED)
        thread = threading.Thread(target=swapper, name="rollout-swapper", daemon=True)
        thread.start()
        for i in range(n):
            pacer.wait_until(int(intended[i]))
            if engine.rungs[0].label != label:
                label = engine.rungs[0].label
                switched.append(now())
            sym = symbols[i % len(symbols)]
            try:
                d = predict(sym, quotes[sym], priority="critical")
                failed[i] = bool(d.flags & failed_flag)
                rung[i] = d.rung_index
            except Exception:
                failed[i] = True
                rung[i] = -1
            ends[i] = now()
        # A swap still preparing when the run ends is taken here (and not measured).
        while thread.is_alive():
            svc.run_side_path(0.001)
            thread.join(0.001)
        if errors:
            raise errors[0]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    lat = ends - intended
    in_swap = np.zeros(n, dtype=bool)
    in_calm = np.zeros(n, dtype=bool)
    after_ns, calm_ns = int(args.after * 1e9), int(args.calm * 1e9)
    for p0, s1 in zip(prepared_from, switched, strict=False):
        in_swap |= (intended >= p0) & (intended < s1 + after_ns)
        in_calm |= (intended >= p0 - calm_ns) & (intended < p0)
    in_calm &= ~in_swap
    # The swap window in three parts: load (the swapping thread), warm-up + switch (the
    # owner's idle time), after the switch (the new version's first decisions).
    in_load = np.zeros(n, dtype=bool)
    in_warm = np.zeros(n, dtype=bool)
    for p0, s1, r in zip(prepared_from, switched, reports, strict=False):
        l1 = p0 + int(r.load_s * 1e9)
        in_load |= (intended >= p0) & (intended < l1)
        in_warm |= (intended >= l1) & (intended < s1)
    in_after = in_swap & ~in_load & ~in_warm
    calm, swap = lat[in_calm], lat[in_swap]
    calm_p999, swap_p999 = pct(calm, 99.9), pct(swap, 99.9)
    return {
        "benchmark": "rollout",
        "rate_hz": args.rate,
        "seconds": args.seconds,
        "decisions": n,
        "swaps": 0 if args.no_swap else min(len(switched), len(prepared_from)),
        "windows": min(len(switched), len(prepared_from)),
        "swap_failed_requests": int(np.count_nonzero(failed & in_swap)),
        "failed_requests": int(np.count_nonzero(failed)),
        "swap_fallbacks": int(np.count_nonzero((rung > 0) & in_swap)),
        "calm_fallbacks": int(np.count_nonzero((rung > 0) & in_calm)),
        "calm_decisions": int(calm.size),
        "swap_decisions": int(swap.size),
        "calm_p50_us": pct(calm, 50), "calm_p99_us": pct(calm, 99), "calm_p999_us": calm_p999,
        "swap_p50_us": pct(swap, 50), "swap_p99_us": pct(swap, 99), "swap_p999_us": swap_p999,
        "parts": {name: {"decisions": int(np.count_nonzero(mask)), "p99_us": pct(lat[mask], 99),
                         "p999_us": pct(lat[mask], 99.9),
                         "max_us": float(lat[mask].max() / 1e3) if mask.any() else float("nan")}
                  for name, mask in (("load", in_load), ("warm_switch", in_warm), ("after", in_after))},
        "calm_max_us": float(calm.max() / 1e3) if calm.size else float("nan"),
        "swap_max_us": float(swap.max() / 1e3) if swap.size else float("nan"),
        "swap_p999_over_calm_p999": swap_p999 / calm_p999 if calm_p999 > 0 else float("nan"),
        "load_s_mean": float(np.mean([r.load_s for r in reports])) if reports else float("nan"),
        "warm_and_switch_s_mean": float(np.mean([r.switch_s for r in reports])) if reports else float("nan"),
        "warmup_inferences": reports[0].warmup_inferences if reports else 0,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
    }


class SpinRuntime:
    """Delegates to ``inner``, then spins until the call has taken ``total_ns``: a model that
    is slower in real CPU time (not a sleep: the owner thread is busy, as with a slow model)."""

    def __init__(self, inner: Any, total_ns: int) -> None:
        self.inner = inner
        self.total_ns = total_ns
        self.kind = f"spin({inner.kind})"
        self.n_inputs = inner.n_inputs
        self.n_outputs = inner.n_outputs

    def run(self, x: np.ndarray) -> np.ndarray:
        """The inner model's answer, no sooner than ``total_ns`` after the call."""
        end = time.perf_counter_ns() + self.total_ns
        y = self.inner.run(x)
        while time.perf_counter_ns() < end:
            pass
        return y


def bad_canary(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """One bad-canary run (``kind``: "slow" or "error"); see the module docstring."""
    workdir = Path(tempfile.mkdtemp(prefix="tailguard-canary-"))
    try:
        svc, quotes, symbols = staged_service(workdir, args)
        engine = svc.engine
        clients = 10_000
        now = time.perf_counter_ns
        pacer = Pacer(lambda budget_s: svc.run_side_path(budget_s))
        tailguard.tune_gc()
        # Calm: the stable version's decision times, to set the SLO from.
        n_calm = int(args.rate)
        start = now() + 20_000_000
        calm = np.zeros(n_calm, dtype=np.int64)
        for i, t in enumerate(fixed_rate(start, args.rate, n_calm)):
            pacer.wait_until(int(t))
            sym = symbols[i % len(symbols)]
            calm[i] = engine.predict(sym, quotes[sym], priority="critical").timings_ns[4]
        stable = svc.models[MODEL]
        mean_ns = int(stable.service_time.mean_ns(1))
        slo_s = (float(np.percentile(calm, 99)) + 2 * mean_ns) / 1e9
        prepared = prepare_swap(svc, MODEL, "2")
        prepared.warm.run_all()
        cand = prepared.model
        cand.runtime = (SpinRuntime(cand.runtime, 5 * mean_ns) if kind == "slow"
                        else FailingRuntime(cand.runtime, "raise"))
        guards = Guards(p99_latency_s=slo_s, max_error_rate=0.01, min_window_samples=50)
        plan = RolloutPlan(model=MODEL, version="2", window_s=10.0, stages=(
            Stage(kind=StageKind.CANARY, share=0.05, min_samples=10**9, guards=guards),
            Stage(kind=StageKind.PROMOTE)))
        rollout = Rollout(svc, plan, candidate=cand)
        svc.attach(rollout)
        n = int(args.canary_seconds * args.rate)
        start = now() + 20_000_000
        intended = fixed_rate(start, args.rate, n)
        by_candidate = np.zeros(n, dtype=bool)
        lat = np.zeros(n, dtype=np.int64)
        pacer.wait_until(start)
        started = now()
        rollout.start()
        label = f"{MODEL}/2"
        for i in range(n):
            pacer.wait_until(int(intended[i]))
            sym = symbols[i % len(symbols)]
            d = rollout.predict_routed(i % clients, sym, quotes[sym], priority="critical")
            by_candidate[i] = d.model_version == label or bool(d.flags & int(Flag.MODEL_FAILED))
            lat[i] = now() - int(intended[i])
        back = [e for e in rollout.events if e.kind is EventKind.ROLLED_BACK]
        svc.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "kind": kind,
        "slo_us": slo_s * 1e6,
        "stable_mean_inference_us": mean_ns / 1e3,
        "rolled_back": bool(back),
        "rollback_s": (back[0].at_ns - started) / 1e9 if back else float("nan"),
        "reason": back[0].reason if back else "",
        "decisions": n,
        "affected": int(np.count_nonzero(by_candidate)),
        "affected_fraction": float(np.count_nonzero(by_candidate)) / n if n else float("nan"),
        "p99_us": pct(lat, 99),
    }


def converge_changes(args: argparse.Namespace, url: str) -> dict[str, Any]:
    """``--converge-changes`` goal changes seen by two replicas; see the module docstring."""
    workdir = Path(tempfile.mkdtemp(prefix="tailguard-converge-"))
    followers: list[GoalFollower] = []
    store = GoalStore(url)
    name: str | None = None
    try:
        services = []
        for i in range(2):
            d = prepare_copy(workdir / f"r{i}")
            services.append(tailguard.load_service(d, freeze_gc=False))
            add_version_2(d)
        name = services[0].spec.name
        store.delete(name)
        followers = [GoalFollower(s, store, name=f"r{i}") for i, s in enumerate(services)]
        guards = Guards(max_error_rate=0.5, min_window_samples=10**6)
        plan = RolloutPlan(model=MODEL, version="2", stages=tuple(
            Stage(kind=StageKind.CANARY, share=sh, min_samples=10**9, guards=guards)
            for sh in (0.01, 0.05, 0.25)))
        cycle = ("declare", "stage 1", "stage 2", "rollback")
        times: dict[str, list[float]] = {k: [] for k in cycle}
        goal: Goal | None = None
        for i in range(args.converge_changes):
            kind = cycle[i % len(cycle)]
            if kind == "declare":
                new = Goal(service=name, plan=plan, rollout_id=f"bench{i}", by="bench")
            elif kind == "rollback":
                assert goal is not None
                new = msgspec.structs.replace(goal, phase=GoalPhase.ROLLED_BACK)
            else:
                assert goal is not None
                new = msgspec.structs.replace(goal, stage=int(kind[-1]))
            t0 = time.perf_counter()
            goal = store.put(new, 0 if goal is None else goal.revision)
            end = t0 + 60.0
            while not all(f.applied is not None and f.applied.revision == goal.revision for f in followers):
                for f in followers:
                    f.drain()
                    if f.last_error is not None:
                        raise RuntimeError(f"replica {f.name}: {f.last_error}")
                if time.perf_counter() > end:
                    raise RuntimeError(f"replicas did not converge on revision {goal.revision}")
                followers[0].watch.changed.wait(0.0005)
                followers[0].watch.changed.clear()
            times[kind].append(time.perf_counter() - t0)
        every = [t for ts in times.values() for t in ts]
    finally:
        for f in followers:
            f.close()
        if name is not None:
            store.delete(name)
        store.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "replica_converge_s": float(np.median(every)) if every else float("nan"),
        "replica_converge_max_s": float(max(every)) if every else float("nan"),
        "replica_converge_by_change": {k: float(np.median(v)) for k, v in times.items() if v},
        "replica_converge_changes": len(every),
    }


def replica_convergence(args: argparse.Namespace) -> dict[str, Any]:
    """``converge_changes`` against ``--redis`` or a ``redis-server`` of our own (NaN without one)."""
    if args.redis:
        return converge_changes(args, args.redis)
    binary = shutil.which("redis-server")
    if binary is None:
        print("replica convergence skipped: no redis-server on PATH (or pass --redis URL)", file=sys.stderr)
        return {"replica_converge_s": float("nan"), "replica_converge_changes": 0}
    workdir = Path(tempfile.mkdtemp(prefix="tailguard-redis-"))
    try:
        with LocalRedis(binary, workdir) as server:
            return converge_changes(args, server.url)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def print_table(s: dict[str, Any], out: Any) -> None:
    """The human-readable summary."""
    print(f"rollout: {s['decisions']} decisions at {s['rate_hz']:.0f}/s, {s['swaps']} hot swaps "
          f"(load {s['load_s_mean'] * 1e3:.0f} ms, then warm-up and switch in idle time "
          f"{s['warm_and_switch_s_mean'] * 1e3:.0f} ms on average; {s['warmup_inferences']} warm-up "
          f"inferences each)", file=out)
    print(f"{'window':8} {'n':>7} {'p50':>8} {'p99':>8} {'p99.9':>8} {'max':>9}   (µs from intended)",
          file=out)
    for w in ("calm", "swap"):
        print(f"{w:8} {s[w + '_decisions']:7d} {s[w + '_p50_us']:8.1f} {s[w + '_p99_us']:8.1f} "
              f"{s[w + '_p999_us']:8.1f} {s[w + '_max_us']:9.1f}", file=out)
    for name, part in s["parts"].items():
        print(f"  {name:12} {part['decisions']:7d} decisions  p99 {part['p99_us']:8.1f}  "
              f"p99.9 {part['p999_us']:8.1f}  max {part['max_us']:9.1f}", file=out)
    print(f"failed in swap windows: {s['swap_failed_requests']}  fallbacks: swap={s['swap_fallbacks']} "
          f"calm={s['calm_fallbacks']}  p99.9 swap/calm: {s['swap_p999_over_calm_p999']:.2f}", file=out)
    for c in s.get("bad_canaries", []):
        print(f"bad canary ({c['kind']}): rolled back after {c['rollback_s']:.3f} s, {c['affected']} of "
              f"{c['decisions']} decisions affected ({c['affected_fraction']:.3%}); "
              f"SLO {c['slo_us']:.1f} us; reason: {c['reason']}", file=out)
    if s.get("replica_converge_changes"):
        print(f"replica convergence: {s['replica_converge_changes']} goal changes, median "
              f"{s['replica_converge_s'] * 1e3:.2f} ms, max {s['replica_converge_max_s'] * 1e3:.1f} ms; "
              + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in s["replica_converge_by_change"].items()),
              file=out)
    for name, limit, text in TARGETS:
        if name not in s:
            continue
        ok = s[name] <= limit
        print(f"{'PASS' if ok else 'FAIL'}  {text} (measured {s[name]:.4g})", file=out)


def main() -> None:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="scored wall time (default 30)")
    ap.add_argument("--rate", type=float, default=2000.0, help="decisions per second (default 2000)")
    ap.add_argument("--first", type=float, default=3.0, help="first swap this many seconds in (default 3)")
    ap.add_argument("--period", type=float, default=4.0, help="seconds between swaps (default 4)")
    ap.add_argument("--after", type=float, default=0.25, help="swap window past the switch, s (default 0.25)")
    ap.add_argument("--calm", type=float, default=1.5, help="calm window before each swap, s (default 1.5)")
    ap.add_argument("--history", type=float, default=60.0, help="ticks replayed first, s (default 60)")
    ap.add_argument("--no-swap", action="store_true",
                    help="baseline: the same windows without swapping (what noise alone gives)")
    ap.add_argument("--canary-seconds", type=float, default=10.0,
                    help="each bad-canary run, s (default 10; 0 skips them)")
    ap.add_argument("--converge-changes", type=int, default=20,
                    help="goal changes for replica convergence (default 20; 0 skips it)")
    ap.add_argument("--redis", default=None, help="goal store URL (default: start a redis-server)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="table to stderr, one JSON object on stdout")
    args = ap.parse_args()
    summary = run(args)
    if args.canary_seconds > 0:
        runs = [bad_canary(args, kind) for kind in ("slow", "error")]
        summary["bad_canaries"] = runs
        # A canary never rolled back counts as never (inf), not as fast.
        summary["bad_canary_rollback_s"] = max(c["rollback_s"] if c["rolled_back"] else float("inf")
                                               for c in runs)
        summary["bad_canary_affected_fraction"] = max(c["affected_fraction"] for c in runs)
    if args.converge_changes > 0:
        summary.update(replica_convergence(args))
    print_table(summary, sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
