"""Edge and remote tiers: what consulting the large model costs and buys, against the edge alone.

Setup, in one run: the **edge** is the trading example with its ladder started at the 30-tree
``fast`` rung (``tailguard.tiers.edge_service_dir``), loaded in this process; the **remote**
is ``tailguard serve examples/trading`` (200-tree ``alpha`` first, deadline-aware admission and
adaptive batching on), a child process on loopback; a ``TieredEngine`` joins them with the
default ``RemoteTierConfig`` (p99 of the last 256 round trips, 500 µs prior, 50 µs margin)
after a warm-up of 300 decisions at a 20 ms budget (the estimate learns the round trip).

Load: open loop at ``--rate`` decisions per second (``bench.openloop``: latency from each
decision's *intended* time; the edge's side path runs in the gaps), each decision for one of
64 symbols with a random quote, its budget drawn from ``--mix`` (budget=weight; the class is
``critical`` up to 300 µs, ``normal`` up to 2 ms, ``bulk`` above).  The same schedule runs
``--rounds`` times in two modes, in blocks interleaved (order alternating each round) so
machine noise falls on both: ``edge_only`` (``Engine.predict`` of the edge service) and
``tiered`` (``TieredEngine.predict``).

Reported: p50/p99/p99.9 from the intended time, overall and per answering tier, for both
modes and as ratios; counts of every ``TierReason``; ``remote_started`` (calls sent),
``remote_late`` (sent and not back by the deadline: client timeouts plus replies that came
after it), ``late_answers_used`` (remote answers used although formed after the decision's
deadline: must be 0), ``over_budget`` (decisions whose own time exceeded their budget); per
budget, the remote share and p99; and an accuracy proxy: the in-process primary model
(``alpha``, same inputs: neither tier's store is fed ticks, so both see the quote and the
stream defaults) scores every decision afterwards, off the clock, and ``mean_abs_to_primary``
/ ``agree_with_primary`` (same side of 0.5) compare each mode's answers to it.

Run: ``.venv/bin/python benchmarks/tiers.py`` (a table) or ``--json`` (table to stderr, the
last stdout line is one JSON object); ``--quick`` for a ~20 s smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from support.example import SERVICE_DIR, ensure_models, log  # noqa: E402

from tailguard import load_service, tune_gc  # noqa: E402
from tailguard.bench.openloop import Pacer, fixed_rate  # noqa: E402
from tailguard.serve.process import ServerProcess  # noqa: E402
from tailguard.tiers import (  # noqa: E402
    AsyncTieredEngine,
    RemoteTierConfig,
    Tier,
    TieredEngine,
    TierReason,
    edge_service_dir,
)

MODES = ("edge_only", "tiered", "blocking")
DEFAULT_MIX = "200us=0.25,1ms=0.25,2ms=0.2,5ms=0.15,20ms=0.15"
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def parse_mix(text: str) -> list[tuple[float, float]]:
    """``"200us=0.3,2ms=0.7"`` -> [(budget_s, weight), ...] (weights normalised)."""
    out = []
    for part in text.split(","):
        budget, weight = part.split("=")
        unit = next(u for u in ("us", "ms", "s") if budget.endswith(u))
        out.append((float(budget[: -len(unit)]) * _UNITS[unit], float(weight)))
    total = sum(w for _, w in out)
    return [(b, w / total) for b, w in out]


def priority_for(budget_s: float) -> str:
    """The trading class whose budget covers ``budget_s`` (a budget only shortens its class's)."""
    return "critical" if budget_s <= 300e-6 else "normal" if budget_s <= 2e-3 else "bulk"


def workload(n: int, mix: list[tuple[float, float]], seed: int) -> dict[str, Any]:
    """``n`` decisions: symbol, quote, budget and class, drawn once and replayed by both modes."""
    rng = np.random.default_rng(seed)
    mids = rng.uniform(20, 500, n)
    spreads = mids * rng.uniform(1, 12, n) * 1e-4
    budgets = rng.choice([b for b, _ in mix], size=n, p=[w for _, w in mix])
    return {
        "keys": [f"SYM{int(i):02d}" for i in rng.integers(0, 64, n)],
        "ctx": [{"bid": float(m - s / 2), "ask": float(m + s / 2),
                 "bid_size": float(rng.integers(1, 50) * 100), "ask_size": float(rng.integers(1, 50) * 100)}
                for m, s in zip(mids, spreads, strict=True)],
        "budget_s": [float(b) for b in budgets],
        "priority": [priority_for(float(b)) for b in budgets],
    }


class Block:
    """Per-decision records of one block: response from the intended time, own time (ns),
    the answer, and whether the remote answered."""

    def __init__(self, n: int) -> None:
        self.resp = np.empty(n, dtype=np.int64)
        self.own = np.empty(n, dtype=np.int64)
        self.out = np.empty(n)
        self.tier = np.zeros(n, dtype=np.int8)  # 0 edge, 1 remote

    def put(self, i: int, due: int, t0: int, t1: int, d: Any) -> None:
        self.resp[i] = t1 - due
        self.own[i] = t1 - t0
        self.out[i] = d.output("p_up")
        self.tier[i] = getattr(d, "tier", None) is Tier.REMOTE

    def arrays(self) -> dict[str, np.ndarray]:
        return {"resp": self.resp, "own": self.own, "out": self.out, "tier": self.tier}


def block(fn: Any, work: dict[str, Any], rate: float, pacer: Pacer) -> dict[str, np.ndarray]:
    """One open-loop block on this thread: every decision of ``work`` at ``rate``."""
    n = len(work["keys"])
    due = fixed_rate(time.perf_counter_ns() + 2_000_000, rate, n).tolist()
    rec = Block(n)
    keys, ctx, budgets, prios = work["keys"], work["ctx"], work["budget_s"], work["priority"]
    now = time.perf_counter_ns
    for i in range(n):
        pacer.wait_until(due[i])
        t0 = now()
        d = fn(keys[i], ctx[i], priority=prios[i], budget_s=budgets[i])
        rec.put(i, due[i], t0, now(), d)
    return rec.arrays()


async def async_block(tiers: AsyncTieredEngine, work: dict[str, Any], rate: float) -> dict[str, np.ndarray]:
    """One open-loop block on the event loop: each decision a task started at its intended time
    (the driver polls the loop with ``sleep(0)`` for the last 1.5 ms before each), so the loop
    decides new arrivals while earlier decisions' remote calls are out."""
    n = len(work["keys"])
    due = fixed_rate(time.perf_counter_ns() + 2_000_000, rate, n).tolist()
    rec = Block(n)
    keys, ctx, budgets, prios = work["keys"], work["ctx"], work["budget_s"], work["priority"]
    now = time.perf_counter_ns

    async def one(i: int) -> None:
        t0 = now()
        d = await tiers.predict(keys[i], ctx[i], priority=prios[i], budget_s=budgets[i])
        rec.put(i, due[i], t0, now(), d)

    tasks = []
    for i in range(n):
        while (gap := due[i] - now()) > 0:
            await asyncio.sleep((gap - 1_000_000) / 1e9 if gap > 1_500_000 else 0)
        tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.sleep(0)  # let it run now: the edge decides before the next arrival
    await asyncio.gather(*tasks)
    return rec.arrays()


def pct(a: np.ndarray) -> dict[str, float | None]:
    """p50/p99/p99.9 of ns values, in µs."""
    if len(a) == 0:
        return {"p50_us": None, "p99_us": None, "p999_us": None}
    p = np.percentile(a / 1e3, [50, 99, 99.9])
    return {"p50_us": round(float(p[0]), 1), "p99_us": round(float(p[1]), 1),
            "p999_us": round(float(p[2]), 1)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    ensure_models()
    mix = parse_mix(args.mix)
    work = workload(args.block, mix, args.seed)
    warm = workload(300, [(20e-3, 1.0)], args.seed + 1)
    workdir = Path(tempfile.mkdtemp(prefix="tiers-bench-"))
    edge = load_service(edge_service_dir(SERVICE_DIR, workdir / "edge", first_rung="fast"))
    tune_gc()
    pacer = Pacer(lambda s: edge.run_side_path(budget_s=s), spin_ns=1_000_000)
    modes: dict[str, list[dict[str, np.ndarray]]] = {m: [] for m in MODES}
    loop = asyncio.new_event_loop()
    with ServerProcess.start(SERVICE_DIR, "--tcp", "127.0.0.1:0") as server:
        assert server.tcp is not None
        cfg = RemoteTierConfig(endpoints=(server.tcp,))
        blocking = TieredEngine.connect(edge, cfg)
        tiered = loop.run_until_complete(AsyncTieredEngine.connect(edge, cfg))
        block(blocking.predict, warm, args.rate, pacer)  # the estimates learn the round trip
        loop.run_until_complete(async_block(tiered, warm, args.rate))
        blocking.reset_statistics()
        tiered.reset_statistics()
        runs = {
            "edge_only": lambda: block(edge.engine.predict, work, args.rate, pacer),
            "tiered": lambda: loop.run_until_complete(async_block(tiered, work, args.rate)),
            "blocking": lambda: block(blocking.predict, work, args.rate, pacer),
        }
        for r in range(args.rounds):
            for mode in MODES[r % 3:] + MODES[:r % 3]:  # rotate the order each round
                modes[mode].append(runs[mode]())
            log(f"round {r + 1}/{args.rounds}: remote answers so far {tiered.counts[TierReason.REMOTE_USED]} "
                f"(blocking: {blocking.counts[TierReason.REMOTE_USED]})")
        stats = {"tiered": tiered.statistics(), "blocking": blocking.statistics()}
        loop.run_until_complete(tiered.aclose())
        blocking.close()
    loop.close()
    edge.close()
    # Accuracy proxy, off the clock: the primary model in process on the same inputs.
    full = load_service(SERVICE_DIR, freeze_gc=False)
    primary = np.array([full.engine.predict(k, c, priority="bulk").output("p_up")
                        for k, c in zip(work["keys"], work["ctx"], strict=True)])
    full.close()
    return report(args, mix, work, modes, stats, primary)


COUNTS = ("remote_started", "remote_used", "remote_late", "remote_timeouts", "remote_late_replies",
          "remote_skipped_budget", "remote_breaker_open", "remote_error", "remote_fallback")


def figures(t: dict[str, np.ndarray], stats: dict[str, Any], budgets_ns: np.ndarray,
            prim: np.ndarray) -> dict[str, Any]:
    """A tiered mode's figures: shares, counts, percentiles overall and per tier, accuracy."""
    remote = t["tier"] == 1
    return {
        "remote_share": round(float(remote.mean()), 4),
        **{k: stats[k] for k in COUNTS},
        "remote_errors": stats["remote_errors"],
        "late_answers_used": int(np.count_nonzero(remote & (t["own"] > budgets_ns))),
        "over_budget": int(np.count_nonzero(t["own"] > budgets_ns)),
        **pct(t["resp"]),
        **{f"tier_edge_{k}": v for k, v in pct(t["resp"][~remote]).items()},
        **{f"tier_remote_{k}": v for k, v in pct(t["resp"][remote]).items()},
        "estimate_us": round(stats["estimate"]["estimate_us"], 1),
        "mean_abs_to_primary": round(float(np.mean(np.abs(t["out"] - prim))), 5),
        "agree_with_primary": round(float(np.mean((t["out"] > 0.5) == (prim > 0.5))), 4),
        "remote_vs_primary_max_abs": round(float(np.max(np.abs(t["out"][remote] - prim[remote]))), 6)
        if remote.any() else None,
    }


def report(args: argparse.Namespace, mix: list[tuple[float, float]], work: dict[str, Any],
           modes: dict[str, list[dict[str, np.ndarray]]], stats: dict[str, Any],
           primary: np.ndarray) -> dict[str, Any]:
    """The JSON object: the asyncio tiered engine's figures unprefixed, the blocking one's as
    ``blocking_*``, the edge alone's as ``edge_only_*``, ratios against the edge alone."""
    cat = {m: {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]} for m, blocks in modes.items()}
    budgets_ns = np.tile(np.round(np.array(work["budget_s"]) * 1e9).astype(np.int64), args.rounds)
    prim = np.tile(primary, args.rounds)
    e = cat["edge_only"]
    out: dict[str, Any] = {
        "rate": args.rate, "decisions_per_mode": len(e["resp"]), "mix": args.mix,
        **figures(cat["tiered"], stats["tiered"], budgets_ns, prim),
        **{f"blocking_{k}": v
           for k, v in figures(cat["blocking"], stats["blocking"], budgets_ns, prim).items()},
        **{f"edge_only_{k}": v for k, v in pct(e["resp"]).items()},
        "edge_only_over_budget": int(np.count_nonzero(e["own"] > budgets_ns)),
        "edge_only_mean_abs_to_primary": round(float(np.mean(np.abs(e["out"] - prim))), 5),
        "edge_only_agree_with_primary": round(float(np.mean((e["out"] > 0.5) == (prim > 0.5))), 4),
    }
    for pre in ("", "blocking_"):
        for k in ("p50", "p99", "p999"):
            a, b = out[f"{pre}{k}_us"], out[f"edge_only_{k}_us"]
            out[f"{pre}{k}_ratio"] = round(a / b, 2) if a and b else None
    per = []
    for b, _ in mix:
        sel = budgets_ns == round(b * 1e9)
        row: dict[str, Any] = {"budget_us": round(b * 1e6), "decisions": int(sel.sum())}
        for mode, pre in (("tiered", ""), ("blocking", "blocking_"), ("edge_only", "edge_only_")):
            m = cat[mode]
            row[f"{pre}remote_share"] = round(float((m["tier"][sel] == 1).mean()), 4)
            row[f"{pre}p99_us"] = pct(m["resp"][sel])["p99_us"]
            row[f"{pre}mean_abs_to_primary"] = round(float(np.mean(np.abs(m["out"][sel] - prim[sel]))), 5)
        per.append(row)
    out["per_budget"] = per
    out["reasons"] = {str(r): stats["tiered"][str(r)] for r in TierReason}
    out["blocking_reasons"] = {str(r): stats["blocking"][str(r)] for r in TierReason}
    return out


def show(r: dict[str, Any]) -> None:
    """The report as tables (stderr)."""
    log(f"{r['decisions_per_mode']} decisions per mode at {r['rate']:.0f}/s, budgets {r['mix']}")
    log(f"{'from intended, us':<28}{'p50':>9}{'p99':>10}{'p99.9':>10}{'remote share':>14}")
    rows = (("edge only", "edge_only_"), ("tiered (asyncio)", ""), ("  edge answered", "tier_edge_"),
            ("  remote answered", "tier_remote_"), ("tiered (blocking)", "blocking_"),
            ("  edge answered", "blocking_tier_edge_"), ("  remote answered", "blocking_tier_remote_"))
    for name, pre in rows:
        share = r.get(pre + "remote_share")
        log(f"{name:<28}{r[pre + 'p50_us'] or '-':>9}{r[pre + 'p99_us'] or '-':>10}"
            f"{r[pre + 'p999_us'] or '-':>10}{'' if share is None else f'{share:.3f}':>14}")
    for name, pre in (("asyncio", ""), ("blocking", "blocking_")):
        log(f"{name}: ratios to edge only p50 {r[pre + 'p50_ratio']} p99 {r[pre + 'p99_ratio']} "
            f"p99.9 {r[pre + 'p999_ratio']}; started {r[pre + 'remote_started']}, "
            f"late {r[pre + 'remote_late']} "
            f"(timeouts {r[pre + 'remote_timeouts']}, late replies {r[pre + 'remote_late_replies']}), "
            f"late answers used {r[pre + 'late_answers_used']}, skipped {r[pre + 'remote_skipped_budget']}, "
            f"fallback {r[pre + 'remote_fallback']}, errors {r[pre + 'remote_errors']}, "
            f"over budget {r[pre + 'over_budget']} (edge only {r['edge_only_over_budget']}), "
            f"estimate {r[pre + 'estimate_us']} us")
    log(f"mean |answer - primary|: asyncio {r['mean_abs_to_primary']}, "
        f"blocking {r['blocking_mean_abs_to_primary']}, "
        f"edge only {r['edge_only_mean_abs_to_primary']}")
    log(f"{'budget':>8}{'n':>7}{'remote':>8}{'p99':>9}{'blk remote':>11}{'blk p99':>10}{'edge p99':>10}"
        f"{'|a-prim|':>10}{'edge |a-prim|':>15}")
    for p in r["per_budget"]:
        log(f"{p['budget_us']:>6}us{p['decisions']:>7}{p['remote_share']:>8.3f}{p['p99_us']:>9}"
            f"{p['blocking_remote_share']:>11.3f}{p['blocking_p99_us']:>10}{p['edge_only_p99_us']:>10}"
            f"{p['mean_abs_to_primary']:>10}{p['edge_only_mean_abs_to_primary']:>15}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=1000.0, help="decisions per second (open loop)")
    ap.add_argument("--block", type=int, default=2000, help="decisions per block (one mode, one round)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mix", default=DEFAULT_MIX, help="budget=weight,... (units us, ms, s)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--quick", action="store_true", help="3 rounds of 400")
    ap.add_argument("--json", action="store_true", help="table to stderr, one JSON object on stdout")
    args = ap.parse_args()
    if args.quick:
        args.block, args.rounds = 400, 3
    r = run(args)
    show(r)
    if args.json:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
