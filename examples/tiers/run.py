"""Edge and remote tiers on the trading example: which tier answers at which budget.

* **edge**: the trading service with its ladder started at the 30-tree ``fast`` rung
  (``tailguard.tiers.edge_service_dir``), loaded in this process;
* **remote**: ``tailguard serve examples/trading`` (the 200-tree ``alpha`` first, the
  server's deadline-aware scheduler and adaptive batching on), started as a child process;
* ``TieredEngine`` between them, configured from ``examples/tiers/tiers.toml``.

For each budget of a ladder (200 µs to 20 ms) it asks ``--decisions`` decisions, one every
millisecond, and prints how many the remote answered, why the others stayed at the edge,
the time each decision took and how far the edge's answer was from the remote's where both
came back.  Then it stops the server and shows the breaker open: the edge answers alone,
without waiting for the dead remote.

Both tiers see the same features: the request's quote, and the stream views at their
declared defaults (neither store is fed ticks here; a deployment shares stream features
through Redis, ``[online] backend = "redis"``, see the top-level README).

Run: ``python examples/tiers/run.py [--decisions 1000] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TRADING = ROOT / "examples" / "trading"

from tailguard import load_service  # noqa: E402
from tailguard.serve.process import ServerProcess  # noqa: E402
from tailguard.tiers import Tier, TieredEngine, edge_service_dir, load_tiers_config  # noqa: E402

#: (budget in seconds, priority class): the class's budget is the ceiling a budget shortens.
BUDGETS = ((200e-6, "critical"), (1e-3, "normal"), (2e-3, "normal"), (5e-3, "bulk"), (10e-3, "bulk"),
           (20e-3, "bulk"))


def ensure_models(log: Any) -> None:
    """Train the trading example's models when missing or stale."""
    if str(TRADING) not in sys.path:
        sys.path.insert(0, str(TRADING))
    import train

    if not train.up_to_date(TRADING):
        log("training the trading example's models (examples/trading/train.py)")
        train.train(TRADING, log=log)


def quotes(n: int, seed: int = 3) -> tuple[list[str], list[dict[str, float]]]:
    """``n`` (symbol, plausible quote) pairs: 64 symbols, random mids, spreads and sizes."""
    rng = np.random.default_rng(seed)
    mids = rng.uniform(20, 500, n)
    spreads = mids * rng.uniform(1, 12, n) * 1e-4
    keys = [f"SYM{int(i):02d}" for i in rng.integers(0, 64, n)]
    ctx = [{"bid": float(m - s / 2), "ask": float(m + s / 2), "bid_size": float(rng.integers(1, 50) * 100),
            "ask_size": float(rng.integers(1, 50) * 100)} for m, s in zip(mids, spreads, strict=True)]
    return keys, ctx


def paced(tiers: TieredEngine, keys: list[str], ctx: list[dict[str, float]], budget_s: float, priority: str,
          interval_s: float) -> list[Any]:
    """One decision per ``interval_s`` (sleeping between them); the decisions."""
    out = []
    nxt = time.perf_counter()
    for key, quote in zip(keys, ctx, strict=True):
        pause = nxt - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        nxt += interval_s
        out.append(tiers.predict(key, quote, priority=priority, budget_s=budget_s))
    return out


def summarize(budget_s: float, decisions: list[Any], stats: dict[str, Any]) -> dict[str, Any]:
    """One row of the table."""
    el = np.array([d.elapsed_ns for d in decisions]) / 1e3
    both = [(d.edge.output("p_up"), d.remote.output("p_up")) for d in decisions if d.remote is not None]
    gap = float(np.mean([abs(a - b) for a, b in both])) if both else None
    return {
        "budget_us": round(budget_s * 1e6),
        "decisions": len(decisions),
        "remote_used": stats["remote_used"],
        "remote_fallback": stats["remote_fallback"],
        "remote_skipped_budget": stats["remote_skipped_budget"],
        "remote_late": stats["remote_late"],
        "remote_error": stats["remote_error"],
        "remote_breaker_open": stats["remote_breaker_open"],
        "p50_us": round(float(np.percentile(el, 50)), 1),
        "p99_us": round(float(np.percentile(el, 99)), 1),
        "over_budget": int(sum(d.elapsed_ns > d.budget_ns for d in decisions)),
        "estimate_us": round(stats["estimate"]["estimate_us"], 1),
        "mean_abs_edge_minus_remote": None if gap is None else round(gap, 4),
    }


def run(decisions: int = 1000, log: Any = print) -> dict[str, Any]:
    """Start both tiers, run every budget, then the breaker demonstration; the report."""
    ensure_models(log)
    edge = load_service(edge_service_dir(TRADING, ROOT / "runs" / "tiers-edge", first_rung="fast"))
    cfg = load_tiers_config(HERE / "tiers.toml")
    keys, ctx = quotes(decisions)
    rows = []
    with ServerProcess.start(TRADING, "--tcp", "127.0.0.1:0") as server:
        assert server.tcp is not None
        cfg = msgspec.structs.replace(cfg, endpoints=(server.tcp,))
        with TieredEngine.connect(edge, cfg) as tiers:
            paced(tiers, keys[:300], ctx[:300], 20e-3, "bulk", 1e-3)  # learn the round trip
            for budget_s, priority in BUDGETS:
                tiers.reset_statistics()
                ds = paced(tiers, keys, ctx, budget_s, priority, 1e-3)
                rows.append(summarize(budget_s, ds, tiers.statistics()))
            server.close()  # the remote tier goes away
            tiers.reset_statistics()
            ds = paced(tiers, keys[:200], ctx[:200], 20e-3, "bulk", 1e-3)
            s = tiers.statistics()
            open_el = [d.elapsed_ns / 1e3 for d in ds if d.reason == "remote_breaker_open"]
            outage = {
                "decisions": len(ds),
                "edge_answered": sum(d.tier is Tier.EDGE for d in ds),
                "remote_error": s["remote_error"],
                "remote_late": s["remote_late"],
                "remote_breaker_open": s["remote_breaker_open"],
                "errors_by_code": s["remote_errors"],
                "breaker": s["breaker"]["state"],
                "breaker_open_p99_us": round(float(np.percentile(open_el, 99)), 1) if open_el else None,
            }
    edge.close()
    return {"budgets": rows, "outage": outage}


def show(report: dict[str, Any], log: Any = print) -> None:
    """The report as a table."""
    log(f"{'budget':>8} {'remote':>7} {'fallbk':>7} {'skipped':>8} {'late':>5} {'error':>6} "
        f"{'p50 us':>8} {'p99 us':>8} {'>budget':>8} {'est us':>8} {'|edge-remote|':>14}")
    for r in report["budgets"]:
        gap = "-" if r["mean_abs_edge_minus_remote"] is None else f"{r['mean_abs_edge_minus_remote']:.4f}"
        log(f"{r['budget_us']:>6}us {r['remote_used']:>7} {r['remote_fallback']:>7} "
            f"{r['remote_skipped_budget']:>8} {r['remote_late']:>5} {r['remote_error']:>6} {r['p50_us']:>8} "
            f"{r['p99_us']:>8} {r['over_budget']:>8} {r['estimate_us']:>8} {gap:>14}")
    o = report["outage"]
    log(f"\nremote stopped: {o['decisions']} decisions, all answered by the edge ({o['edge_answered']}); "
        f"remote_error={o['remote_error']} remote_late={o['remote_late']} "
        f"remote_breaker_open={o['remote_breaker_open']} (breaker {o['breaker']}, "
        f"errors {o['errors_by_code']}); "
        f"p99 with the breaker open: {o['breaker_open_p99_us']} us")


def main() -> None:
    """Command line: ``--decisions N`` per budget, ``--json`` for one JSON object at the end."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--decisions", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    def log(*parts: Any) -> None:
        print(*parts, file=sys.stderr if args.json else sys.stdout, flush=True)

    report = run(args.decisions, log)
    show(report, log)
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
