"""Serve the gaming service on generated play and report latency and cheat-detection quality.

Trains the models when they are missing or pin stale feature versions, loads the service
with ``tailguard.load_service``, replays a stretch of play (fights, input samples, reports)
into the embedded store, then goes on with live play: at every match end it asks for the
cheat score of each of the ten players (``predict``, class ``critical``; 1% of the asks
name a player the store has never seen) and for the whole lobby at once (``predict_batch``,
class ``normal``).  It prints p50 / p99 / p99.9 per stage and in total for both, which
ladder rungs answered, and the AUC of the per-player scores against the hidden truth
(who cheats), next to a baseline (the match's kills per death alone).

Run: ``python examples/gaming/run.py [--requests 10000] [--seconds 20] [--json]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import train as training  # noqa: E402
from events import HOUR, START_NS, generate, make_world  # noqa: E402

from tailguard.bench import report as reporting  # noqa: E402
from tailguard.decision import Flag  # noqa: E402
from tailguard.models.training import ensure_trained  # noqa: E402
from tailguard.observe.quality import auc  # noqa: E402
from tailguard.service import Service, load_service  # noqa: E402

UNKNOWN_RATE = 0.01


def run(
    service_dir: Path = HERE,
    *,
    requests: int = 10000,
    seconds: float | None = None,
    history_matches: int = 3500,
    seed: int = 7,
    log: Any = print,
    freeze_gc: bool = True,
    train_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train if needed, load, replay the history, then serve every match end's players and
    lobby; returns the report as a dict (see the module doc)."""
    service_dir = Path(service_dir).resolve()
    train_metrics = ensure_trained(service_dir, training.up_to_date, training.train, log,
                                   **(train_kwargs or {}))
    svc: Service = load_service(service_dir, freeze_gc=freeze_gc)
    world = make_world(seed=training.WORLD_SEED)
    history = generate(world, history_matches, seed=seed, start_ns=START_NS + 24 * HOUR)
    evs = history.events()
    dec = history.decisions
    # The first 70% of the match ends are history; the rest are served live.
    first_live = int(len(dec.ts_ns) * 0.7)
    first_live -= first_live % 10
    process = svc.stream.process
    t0 = time.perf_counter()
    j = 0
    t_live = int(dec.ts_ns[first_live]) if first_live < len(dec.ts_ns) else int(dec.ts_ns[-1]) + 1
    while j < len(evs) and evs[j]["ts_ns"] < t_live:
        process(evs[j])
        j += 1
    log(f"replayed {j} events ({first_live // 10} matches of history) into the store in "
        f"{time.perf_counter() - t0:.1f}s; serving up to {requests} player decisions live")
    rng = np.random.default_rng(seed)
    reporting.start_measuring(svc)
    predict, predict_batch = svc.engine.predict, svc.engine.predict_batch
    names = world.players
    scores: list[float] = []
    labels: list[bool] = []
    kd: list[float] = []
    rungs = np.zeros(len(svc.engine.rungs), dtype=np.int64)
    unknown_asked = unknown_flagged = lobbies = 0
    done = 0
    start = time.perf_counter()
    i = first_live
    while i < len(dec.ts_ns) and done < requests:
        if seconds is not None and time.perf_counter() - start >= seconds:
            break
        t = int(dec.ts_ns[i])
        while j < len(evs) and evs[j]["ts_ns"] <= t:  # live play up to this match end
            process(evs[j])
            j += 1
        hi = i
        while hi < len(dec.ts_ns) and dec.ts_ns[hi] == t:
            hi += 1
        lobby = [names[p] for p in dec.player[i:hi].tolist()]
        b = predict_batch(lobby, {"ping_ms": dec.ping_ms[i:hi], "match_kills": dec.kills[i:hi],
                                  "match_deaths": dec.deaths[i:hi]}, priority="normal")
        lobbies += 1
        rungs += np.bincount(b.rungs, minlength=len(rungs))
        for k in range(i, hi):
            p = int(dec.player[k])
            unknown = rng.random() < UNKNOWN_RATE
            key = f"p_new_{k}" if unknown else names[p]
            ctx = {"ping_ms": float(dec.ping_ms[k]), "match_kills": float(dec.kills[k]),
                   "match_deaths": float(dec.deaths[k])}
            d = predict(key, ctx, priority="critical")
            done += 1
            rungs[d.rung_index] += 1
            if unknown:
                unknown_asked += 1
                unknown_flagged += bool(d.flags & Flag.UNKNOWN_ENTITY)
                continue
            scores.append(float(d.outputs[0]))
            labels.append(bool(world.cheater[p]))
            kd.append(ctx["match_kills"] / (ctx["match_deaths"] + 1.0))
        i = hi
        svc.run_side_path(budget_s=0.0005)
    wall_s = time.perf_counter() - start
    svc.run_side_path()
    snap = svc.latency_snapshot()
    y = np.array(labels)
    return {
        "example": "gaming",
        "requests": done,
        "lobbies": lobbies,
        "wall_s": round(wall_s, 2),
        "latency_us": reporting.latency_us(snap.get("predict", {})),
        "lobby_latency_us": reporting.latency_us(snap.get("predict_batch", {})),
        "budget_us": reporting.budgets_us(svc.spec.budgets),
        "rungs": reporting.rung_counts(svc.engine.rung_names, rungs),
        "deadline_missed": svc.engine.deadline_missed,
        "unknown_players": {"asked": unknown_asked, "flagged": unknown_flagged},
        "events_applied": svc.stream.statistics()["applied"],
        "quality": {
            "auc_cheater": round(auc(y, np.array(scores)), 4) if len(y) else None,
            "auc_baseline_match_kd": round(auc(y, np.array(kd)), 4) if len(y) else None,
            "cheater_decisions": int(y.sum()),
            "honest_decisions": int(len(y) - y.sum()),
        },
        "train": train_metrics,
    }


def format_report(r: dict[str, Any]) -> str:
    """The report as a small text table."""
    lines = [reporting.table_header(" (us)")]
    for title, key in (("per player (predict, critical)", "latency_us"),
                       ("per lobby of 10 (predict_batch, normal)", "lobby_latency_us")):
        lines.append(title)
        for s, row in r[key].items():
            budget = r["budget_us"][s] if key == "latency_us" else None
            lines.append(reporting.table_row(f"  {s}", row, budget))
    lines.append("")
    lines.append("ladder answered: " + "  ".join(f"{k}={v}" for k, v in r["rungs"].items()))
    lines.append(f"decisions: {r['requests']} players + {r['lobbies']} lobbies in {r['wall_s']:.1f}s, "
                 f"deadline missed: {r['deadline_missed']}, events applied: {r['events_applied']}")
    u = r["unknown_players"]
    lines.append(f"unknown players asked: {u['asked']}, flagged unknown: {u['flagged']}")
    q = r["quality"]
    lines.append(f"cheat detection: AUC {q['auc_cheater']} (baseline, match kills/death: "
                 f"{q['auc_baseline_match_kd']}) over {q['cheater_decisions']} cheater and "
                 f"{q['honest_decisions']} honest decisions")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=10000, help="player decisions to serve")
    ap.add_argument("--seconds", type=float, default=None, help="stop serving after this many seconds")
    ap.add_argument("--history-matches", type=int, default=3500, help="matches of play to generate")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="print the report as one JSON object (last line)")
    args = ap.parse_args(argv)
    report = run(HERE, requests=args.requests, seconds=args.seconds, history_matches=args.history_matches,
                 seed=args.seed, log=reporting.report_log(args.json))
    reporting.emit_report(report, args.json, format_report)


if __name__ == "__main__":
    main()
