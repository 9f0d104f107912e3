"""Serve the recsys service on generated traffic and report latency and ranking quality.

Trains the models when they are missing or pin stale feature versions, loads the service
with ``tailguard.load_service``, writes the item catalog and replays a stretch of traffic
(impressions and clicks) into the embedded store, then serves ranking requests: one user
(1% never seen before) and 200 candidate items (0.5% of requests carry a brand-new item)
per ``predict_batch`` call, with live traffic applied between requests.  It prints p50 /
p99 / p99.9 per stage and in total, which ladder rungs answered, and the ranking quality
against the hidden truth: NDCG@10 with the true click probabilities as gains (the model,
the item click rate alone, and a random order) and the AUC of the scores against clicks
drawn from those probabilities.

Run: ``python examples/recsys/run.py [--requests 3000] [--seconds 20] [--json]``.
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
from events import HOUR, START_NS, UNKNOWN_USER, generate, make_world  # noqa: E402

from tailguard.bench import report as reporting  # noqa: E402
from tailguard.decision import Flag  # noqa: E402
from tailguard.models.training import ensure_trained  # noqa: E402
from tailguard.observe.quality import auc  # noqa: E402
from tailguard.service import Service, load_service  # noqa: E402

CANDIDATES = 200
NEW_ITEM = "i_new"


def ndcg_at(gains_in_rank_order: np.ndarray, gains: np.ndarray, k: int = 10) -> float:
    """NDCG@k of a ranking: its gains in ranked order against the ideal order of ``gains``."""
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = float(np.sort(gains)[::-1][:k] @ disc[: min(k, len(gains))])
    return float(gains_in_rank_order[:k] @ disc[: min(k, len(gains))]) / ideal if ideal > 0 else 0.0


def run(
    service_dir: Path = HERE,
    *,
    requests: int = 3000,
    seconds: float | None = None,
    history_sessions: int = 16_000,
    priority: str = "normal",
    seed: int = 7,
    log: Any = print,
    freeze_gc: bool = True,
    train_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train if needed, load, write the catalog and replay the history, then serve ranking
    requests among live traffic; returns the report as a dict (see the module doc)."""
    service_dir = Path(service_dir).resolve()
    train_metrics = ensure_trained(service_dir, training.up_to_date, training.train, log,
                                   **(train_kwargs or {}))
    svc: Service = load_service(service_dir, freeze_gc=freeze_gc)
    world = make_world(seed=training.WORLD_SEED)
    # The traffic after the training period: the same world, new sessions.
    live_share = 0.25
    history = generate(world, history_sessions, seed=seed, start_ns=START_NS + 48 * HOUR)
    evs = history.events()
    n_warm = int(len(evs) * (1.0 - live_share))
    t0 = time.perf_counter()
    svc.store.write_many("item_catalog", world.items, world.category.reshape(-1, 1).astype(np.float64))
    process = svc.stream.process
    for ev in evs[:n_warm]:
        process(ev)
    log(f"replayed {n_warm} events ({history_sessions} sessions over 48 h) into the store in "
        f"{time.perf_counter() - t0:.1f}s; serving {requests} requests x {CANDIDATES} candidates")
    live = evs[n_warm:]
    per_request = max(1, len(live) // max(requests, 1))
    rng = np.random.default_rng(seed)
    n_items = len(world.items)
    reporting.start_measuring(svc)
    predict_batch = svc.engine.predict_batch
    ndcg_model: list[float] = []
    ndcg_ctr: list[float] = []
    ndcg_random: list[float] = []
    scores: list[np.ndarray] = []
    clicks: list[np.ndarray] = []
    rungs = np.zeros(len(svc.engine.rungs), dtype=np.int64)
    flagged_unknown = 0
    unknown_rows_expected = 0
    client_ns: list[int] = []
    j = 0
    start = time.perf_counter()
    done = 0
    for i in range(requests):
        if seconds is not None and time.perf_counter() - start >= seconds:
            break
        # Live traffic keeps arriving between requests.
        for ev in live[j : j + per_request]:
            process(ev)
        j += per_request
        now_ts = live[min(j, len(live) - 1)]["ts_ns"] if live else evs[-1]["ts_ns"]
        hour = float(((now_ts - START_NS) / HOUR) % 24.0)
        mobile = float(rng.random() < 0.5)
        u = int(rng.choice(len(world.users), p=world.activity))
        user = UNKNOWN_USER if rng.random() < 0.01 else world.users[u]
        cand = rng.choice(n_items, CANDIDATES, replace=False)
        ids = [world.items[c] for c in cand.tolist()]
        new_item = rng.random() < 0.005
        if new_item:
            ids[0] = NEW_ITEM
        t_a = time.perf_counter_ns()
        d = predict_batch({"user": user, "item": ids}, {"hour": hour, "mobile": mobile}, priority=priority)
        client_ns.append(time.perf_counter_ns() - t_a)
        done += 1
        rungs += np.bincount(d.rungs, minlength=len(rungs))
        flagged_unknown += int(np.count_nonzero(d.flags & Flag.UNKNOWN_ENTITY))
        # What the flags should say: every row of a user the store has never seen, and the new item.
        unknown_rows_expected += CANDIDATES if svc.store.row("user", user) == 0 else int(new_item)
        if i % 20 == 19:
            svc.run_side_path(budget_s=0.002)
        if user == UNKNOWN_USER:
            continue  # no hidden truth for a user the world does not have
        keep = slice(1, None) if new_item else slice(None)
        p_true = world.true_p(u, cand[keep], hour, mobile)
        score = d.outputs[keep, 0]
        ndcg_model.append(ndcg_at(p_true[np.argsort(-score, kind="stable")], p_true))
        ctr = svc.store.read_many("item_stats", [world.items[c] for c in cand[keep].tolist()])["ctr"]
        ndcg_ctr.append(ndcg_at(p_true[np.argsort(-ctr, kind="stable")], p_true))
        ndcg_random.append(ndcg_at(p_true[rng.permutation(len(p_true))], p_true))
        scores.append(score)
        clicks.append(rng.random(len(p_true)) < p_true)
    wall_s = time.perf_counter() - start
    svc.run_side_path()
    snap = svc.latency_snapshot().get("predict_batch", {})
    client = np.array(client_ns, dtype=np.float64) / 1e3
    report: dict[str, Any] = {
        "example": "recsys",
        "requests": done,
        "candidates_per_request": CANDIDATES,
        "wall_s": round(wall_s, 2),
        "requests_per_s": round(done / wall_s, 1) if wall_s > 0 else 0.0,
        "latency_us": reporting.latency_us(snap),
        "budget_us": reporting.budgets_us(svc.spec.budgets),
        "client_us": {
            "p50_us": round(float(np.percentile(client, 50)), 1) if done else 0.0,
            "p99_us": round(float(np.percentile(client, 99)), 1) if done else 0.0,
            "p999_us": round(float(np.percentile(client, 99.9)), 1) if done else 0.0,
        },
        "rungs": reporting.rung_counts(svc.engine.rung_names, rungs),
        "deadline_missed": svc.engine.deadline_missed,
        "unknown_rows": {"flagged": flagged_unknown, "expected": unknown_rows_expected},
        "events_applied": svc.stream.statistics()["applied"],
        "quality": {
            "ndcg10_model": round(float(np.mean(ndcg_model)), 4) if ndcg_model else None,
            "ndcg10_item_ctr": round(float(np.mean(ndcg_ctr)), 4) if ndcg_ctr else None,
            "ndcg10_random": round(float(np.mean(ndcg_random)), 4) if ndcg_random else None,
            "auc_sampled_clicks": round(auc(np.concatenate(clicks), np.concatenate(scores)), 4)
            if scores else None,
        },
        "train": train_metrics,
    }
    return report


def format_report(r: dict[str, Any]) -> str:
    """The report as a small text table."""
    lines = [reporting.table_header(f"(us, per request of {r['candidates_per_request']} candidates)")]
    for s, row in r["latency_us"].items():
        lines.append(reporting.table_row(s, row, r["budget_us"][s]))
    lines.append(reporting.table_row("client", r["client_us"]))
    lines.append("")
    lines.append("ladder answered (rows): " + "  ".join(f"{k}={v}" for k, v in r["rungs"].items()))
    lines.append(f"requests: {r['requests']} in {r['wall_s']:.1f}s ({r['requests_per_s']:.0f}/s), "
                 f"deadline missed: {r['deadline_missed']}, events applied: {r['events_applied']}")
    u = r["unknown_rows"]
    lines.append(f"unknown-entity rows flagged: {u['flagged']} "
                 f"(expected {u['expected']}: users without history, new items)")
    q = r["quality"]
    lines.append(f"ranking quality: NDCG@10 model {q['ndcg10_model']}  item-ctr {q['ndcg10_item_ctr']}  "
                 f"random {q['ndcg10_random']};  AUC vs sampled clicks {q['auc_sampled_clicks']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=3000, help="ranking requests to serve")
    ap.add_argument("--seconds", type=float, default=None, help="stop serving after this many seconds")
    ap.add_argument("--history-sessions", type=int, default=16_000, help="sessions of traffic to replay")
    ap.add_argument("--priority", default="normal", help="priority class of the requests")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="print the report as one JSON object (last line)")
    args = ap.parse_args(argv)
    report = run(HERE, requests=args.requests, seconds=args.seconds, history_sessions=args.history_sessions,
                 priority=args.priority, seed=args.seed, log=reporting.report_log(args.json))
    reporting.emit_report(report, args.json, format_report)


if __name__ == "__main__":
    main()
