"""``tailguard stress soak``: mixed classes at 70 % of a measured capacity for N minutes, a fault
every period, and a check that nothing grows.

Setup: Redis and two replicas (``runner.Env``).  Capacity: after a 1 s warm-up at 100/s,
open-loop steps of 2 s at doubling rates from 100/s; the capacity is the highest rate whose
step answered at least 97 % of its requests with a median latency within the largest class
budget plus the late slack (past capacity queues grow and the median follows them; a tail
percentile would measure the machine's noise instead) (on a small machine
the measuring client may be the limit: the figure is what this client can drive).  The soak
then sends 70 % of it, one open-loop segment per minute, and every ``fault_every_s`` injects
the next fault of the cycle redis-restart, slow-model, disconnect-storm, raising-model for a
quarter of the period (at most 5 s).  Worker kills are left out: a restarted process starts
with fresh memory and would hide the growth the soak is looking for.

Per minute: sent, lost, late, p50/p99/p99.9 (ms, from intended send time), the replicas'
resident memory (MB, summed) and open descriptors at the minute's end, and the faults
injected.  Trend: the least-squares slope of memory (MB per minute) and of descriptors (per
minute) over the minutes after the first (warm-up); growth is flagged when the memory slope
exceeds ``max_rss_growth_mb_per_min`` (default 1 MB/min) or the descriptor slope exceeds
``max_fd_growth_per_min`` (default 1/min).  Fewer than 3 minutes after warm-up give no trend
(reported as such, not as a pass).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.client import AsyncClient
from tailguard.stress.load import LoadPlan, OpenLoad
from tailguard.stress.measure import window_figures
from tailguard.stress.runner import Env, StressConfig, measured_client
from tailguard.stress.scenarios import (
    DisconnectStormScenario,
    RaisingModel,
    RedisRestart,
    Scenario,
    SlowModel,
)
from tailguard.stress.target import Target, class_plans

__all__ = ["run_soak", "trend", "write_soak"]


class _Setup(Scenario):
    name = "soak"
    redis = True
    replicas = 2


def trend(values: list[float]) -> float | None:
    """Least-squares slope per step of ``values`` (None with fewer than 3)."""
    if len(values) < 3:
        return None
    x = np.arange(len(values), dtype=np.float64)
    return float(np.polyfit(x, np.asarray(values, dtype=np.float64), 1)[0])


async def _capacity(client: AsyncClient, env: Env, plan_for: Callable[[float, float], LoadPlan],
                    log: Callable[[str], None]) -> tuple[float, list[dict[str, Any]]]:
    cfg = env.config
    steps: list[dict[str, Any]] = []
    best = 0.0
    await OpenLoad(client, plan_for(100.0, 1.0)).run()  # warm-up: connections, caches, learned costs
    rate = 100.0
    while rate <= 16_000:
        plan = plan_for(rate, 2.0)
        out = await OpenLoad(client, plan).run()
        budgets = np.array([round(c.budget_s * 1e9) for c in plan.classes], dtype=np.int64)
        f = window_figures(out, np.ones(out.n, dtype=bool), budgets, round(cfg.late_slack_ms * 1e6))
        cap_ms = max(c.budget_s for c in plan.classes) * 1e3 + cfg.late_slack_ms
        good = f["ok"] >= 0.97 * f["sent"] and f["p50_ms"] is not None and f["p50_ms"] <= cap_ms
        steps.append({"rate_hz": rate, "ok": f["ok"], "sent": f["sent"], "p50_ms": f["p50_ms"],
                      "p99_ms": f["p99_ms"], "good": good})
        log(f"soak: capacity step {rate:g}/s: ok {f['ok']}/{f['sent']}, p50 {f['p50_ms']} ms"
            f" -> {'good' if good else 'over'}")
        if not good:
            break
        best = rate
        rate *= 2
    return best, steps


async def _soak(env: Env, minutes: float, minute_s: float, fault_every_s: float, capacity_hz: float | None,
                log: Callable[[str], None]) -> dict[str, Any]:
    cfg = env.config
    classes = class_plans(env.service_dir, cfg.mix or env.target.mix)
    client = measured_client(cfg, [r.address for r in env.replicas], client_id="soak")
    await client.connect()

    def plan_for(rate: float, seconds: float, seed: int = 1) -> LoadPlan:
        return LoadPlan(rate, seconds, env.target.keys, env.target.context, classes, timeout_s=cfg.timeout_s,
                        seed=seed)

    if capacity_hz is None:
        capacity, steps = await _capacity(client, env, plan_for, log)
    else:
        capacity, steps = capacity_hz, []
    rate = max(50.0, 0.7 * capacity)
    log(f"soak: capacity {capacity:g}/s; soaking at {rate:g}/s for {minutes:g} x {minute_s:g} s")
    cycle: list[Scenario] = [RedisRestart(), SlowModel(), DisconnectStormScenario(), RaisingModel()]
    fault_s = min(5.0, fault_every_s / 4)
    faults: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    async def faulter() -> None:
        k = 0
        while True:
            await asyncio.sleep(max(0.0, t0 + (k + 1) * fault_every_s - time.perf_counter()))
            sc = cycle[k % len(cycle)]
            at = time.perf_counter() - t0
            await sc.inject(env)
            await asyncio.sleep(fault_s)
            await sc.remove(env)
            took = time.perf_counter() - t0 - at
            faults.append({"fault": sc.name, "at_s": round(at, 2), "for_s": round(took, 2)})
            k += 1

    task = asyncio.get_running_loop().create_task(faulter())
    rows: list[dict[str, Any]] = []
    budgets = np.array([round(c.budget_s * 1e9) for c in classes], dtype=np.int64)
    try:
        for m in range(max(1, round(minutes))):
            n_faults = len(faults)
            load = OpenLoad(client, plan_for(rate, minute_s, seed=m + 2))
            out = await load.run(drain_s=cfg.timeout_s + 0.5)
            f = window_figures(out, np.ones(out.n, dtype=bool), budgets, round(cfg.late_slack_ms * 1e6))
            await asyncio.to_thread(env.sample)
            _, rss, fds = env.samples[-1]
            row = {"minute": m + 1, "sent": f["sent"], "lost": f["lost"], "shed": f["shed"],
                   "late": f["late"],
                   "p50_ms": f["p50_ms"], "p99_ms": f["p99_ms"], "p999_ms": f["p999_ms"],
                   "rss_mb": round(rss / 2**20, 1), "fds": fds,
                   "faults": [x["fault"] for x in faults[n_faults:]]}
            rows.append(row)
            log("soak: " + json.dumps(row))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for sc in cycle:  # a fault cut short by the end of the run must not outlive it
            with contextlib.suppress(Exception):
                await sc.remove(env)
        await client.aclose()
    return {"capacity_hz": capacity, "capacity_steps": steps, "rate_hz": rate, "minutes": rows,
            "faults": faults}


def run_soak(target: Target, config: StressConfig, workdir: Path, *, minutes: float = 5.0,
             minute_s: float = 60.0, fault_every_s: float = 60.0, max_rss_growth_mb_per_min: float = 1.0,
             max_fd_growth_per_min: float = 1.0, capacity_hz: float | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the soak (see the module docstring); a JSON-ready dict with ``passed``.
    ``capacity_hz`` given: use it instead of measuring (tests, repeat runs)."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = Env(target, config, workdir)
    try:
        env.start(_Setup())
        res = asyncio.run(_soak(env, minutes, minute_s, fault_every_s, capacity_hz, log))
    finally:
        env.close()
    after = res["minutes"][1:]
    scale = 60.0 / minute_s  # slopes per minute of wall time even when "minutes" are shortened
    rss_slope = trend([r["rss_mb"] for r in after])
    fd_slope = trend([float(r["fds"]) for r in after])
    res["rss_growth_mb_per_min"] = None if rss_slope is None else round(rss_slope * scale, 3)
    res["fd_growth_per_min"] = None if fd_slope is None else round(fd_slope * scale, 3)
    res["growth_flagged"] = bool((rss_slope is not None and rss_slope * scale > max_rss_growth_mb_per_min)
                                 or (fd_slope is not None and fd_slope * scale > max_fd_growth_per_min))
    res["trend_measured"] = rss_slope is not None
    res["lost"] = sum(r["lost"] for r in res["minutes"])
    res["late"] = sum(r["late"] for r in res["minutes"])
    res["thresholds"] = {"max_rss_growth_mb_per_min": max_rss_growth_mb_per_min,
                         "max_fd_growth_per_min": max_fd_growth_per_min}
    res["passed"] = res["trend_measured"] and not res["growth_flagged"]
    return res


def write_soak(res: dict[str, Any], out_dir: Path, meta: dict[str, Any]) -> tuple[Path, Path]:
    """``soak.json`` and ``soak.md`` in ``out_dir``; their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / "soak.json", out_dir / "soak.md"
    js.write_text(json.dumps({"meta": meta, **res}, indent=2))
    lines = ["# Soak report", "", f"`{meta.get('command', '')}` — {meta.get('when', '')}", "",
             f"Capacity {res['capacity_hz']:g}/s (measured), soaked at {res['rate_hz']:g}/s.  Memory growth "
             f"{res['rss_growth_mb_per_min']} MB/min, descriptors {res['fd_growth_per_min']}/min after the "
             "first "
             f"minute: {'GROWTH FLAGGED' if res['growth_flagged'] else 'no growth trend'}"
             f"{'' if res['trend_measured'] else ' (too few minutes for a trend)'}.", "",
             "| minute | sent | lost | shed | late | p50 ms | p99 ms | p99.9 ms | RSS MB | fds | faults |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in res["minutes"]:
        lines.append("| " + " | ".join(str(r[k]) for k in ("minute", "sent", "lost", "shed", "late", "p50_ms",
                                                          "p99_ms", "p999_ms", "rss_mb", "fds"))
                     + f" | {', '.join(r['faults']) or '—'} |")
    md.write_text("\n".join(lines) + "\n")
    return md, js
