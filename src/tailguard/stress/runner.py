"""Run one fault scenario: start what it needs, load it open-loop, inject the fault, measure.

``run_scenario(scenario, target, config, workdir)``:

1. starts the dependencies the scenario declares (redis-server, nats-server, the delaying
   proxy) and its server replicas (real ``tailguard serve`` processes, ``cluster.Replica``),
   on a copy of the service (``target.service_copy``);
2. connects one ``AsyncClient`` to every replica (failover, health checks, idempotent
   retries: the client a production caller would use);
3. sends ``config.rate_hz`` requests/s for ``config.seconds`` (``load.OpenLoad``); the first
   ``warmup_s`` are not measured; the fault is injected at ``fault_start`` of the run and
   removed ``fault_length`` later (fractions of ``seconds``; a scenario may choose its own),
   the actual times recorded: *during* runs from the moment injection began to the moment
   removal finished (the dependency answers again, the replica serves again);
4. samples the replicas' resident memory and open descriptors every 250 ms;
5. returns a JSON-ready dict: the issue's keys (``lost``, ``late``, ``p99_ms_before``,
   ``p99_ms_during``, ``p99_ms_after``, the ``p999_ms_*`` ones, ``recovery_s``), the figures
   per window and per class (``measure``), what the scenario itself counted, and ``checks``:
   each bound the scenario must hold, true or false.

Everything is stopped on the way out, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tailguard.client import AsyncClient, HedgePolicy
from tailguard.stress.cluster import Replica
from tailguard.stress.load import LoadPlan, OpenLoad
from tailguard.stress.measure import class_figures, recovery, timeline, window_figures
from tailguard.stress.target import Target, class_plans, service_copy

if TYPE_CHECKING:
    from tailguard.features.online.server import LocalRedis
    from tailguard.stress.proxy import DelayProxy
    from tailguard.stress.scenarios import Scenario
    from tailguard.stress.services import LocalNats

__all__ = ["Env", "StressConfig", "run_scenario", "sleep_until"]


@dataclass
class StressConfig:
    """How a scenario is run (durations in seconds, rates per second)."""

    seconds: float = 12.0
    rate_hz: float = 400.0
    warmup_s: float = 1.5
    fault_start: float = 0.35
    fault_length: float = 0.3
    late_slack_ms: float = 5.0
    timeout_s: float = 2.0
    bin_s: float = 0.1
    stable_s: float = 0.5
    kill_every_s: float = 10.0
    crash_every_s: float = 3.0
    slow_factor: float = 10.0
    slow_floor_ms: float = 1.0
    delay_ms: float = 100.0
    storm_rate_hz: float = 200.0
    max_frame: int = 1 << 16
    mix: str | None = None
    budgets: str | None = None  # "critical=10ms,...": class budgets replaced in the service copy
    hedge: bool = False  # the measured client hedges (HedgePolicy defaults: at its p95, <= 10 %)
    seed: int = 1


async def sleep_until(t_ns: int) -> None:
    """Sleep on the running loop until ``perf_counter_ns() >= t_ns``."""
    gap = t_ns - time.perf_counter_ns()
    if gap > 0:
        await asyncio.sleep(gap / 1e9)


class Env:
    """What a scenario runs against; scenarios reach its parts (``None`` when not started)."""

    def __init__(self, target: Target, config: StressConfig, workdir: Path) -> None:
        self.target = target
        self.config = config
        self.workdir = workdir
        self.service_dir = workdir / "service"
        self.redis: LocalRedis | None = None
        self.nats: LocalNats | None = None
        self.proxy: DelayProxy | None = None
        self.replicas: list[Replica] = []
        self.samples: list[tuple[int, int, int]] = []  # (t_ns, rss bytes, open fds) of all replicas

    @property
    def online_url(self) -> str | None:
        """The Redis URL servers read: through the proxy when there is one."""
        if self.proxy is not None:
            return f"redis://{self.proxy.address}/0"
        return self.redis.url if self.redis is not None else None

    def start(self, scenario: Scenario) -> None:
        """Start the dependencies and replicas ``scenario`` declares."""
        from tailguard.stress.services import LocalNats, start_redis

        service_copy(self.target, self.service_dir, online=scenario.redis, budgets=self.config.budgets)
        if scenario.redis:
            self.redis = start_redis(self.workdir / "redis")
        if scenario.proxy:
            from tailguard.stress.proxy import DelayProxy

            assert self.redis is not None
            self.proxy = DelayProxy(("127.0.0.1", self.redis.port))
            self.proxy.start()
        if scenario.nats:
            self.nats = LocalNats(self.workdir / "nats" / "store")
            self.nats.start()
        extra: list[str] = []
        if self.online_url is not None:
            extra += ["--online-url", self.online_url]
        if scenario.max_frame:
            extra += ["--max-frame", str(self.config.max_frame)]
        for i in range(scenario.replicas):
            r = Replica(self.service_dir, self.workdir / f"replica{i}", tuple(extra),
                        workers=scenario.workers)
            self.replicas.append(r)
            r.start()

    def sample(self) -> None:
        """Record the replicas' summed resident memory and open descriptors now."""
        self.samples.append((time.perf_counter_ns(), sum(r.rss_bytes() for r in self.replicas),
                             sum(r.open_fds() for r in self.replicas)))

    def close(self) -> None:
        """Stop everything that was started."""
        for r in self.replicas:
            r.close()
        if self.proxy is not None:
            self.proxy.close()
        if self.nats is not None:
            self.nats.stop()
        if self.redis is not None:
            self.redis.stop()


def run_scenario(scenario: Scenario, target: Target, config: StressConfig, workdir: Path) -> dict[str, Any]:
    """Run ``scenario`` (see the module docstring); its result as a JSON-ready dict."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = Env(target, config, workdir)
    try:
        env.start(scenario)
        scenario.setup(env)
        return asyncio.run(_measure(scenario, env))
    finally:
        try:
            scenario.teardown(env)
        finally:
            env.close()


def _window_peaks(env: Env, bounds: list[tuple[str, int, int]]) -> dict[str, Any]:
    s = np.array(env.samples, dtype=np.int64).reshape(-1, 3)
    out: dict[str, Any] = {}
    for name, lo, hi in bounds:
        sel = s[(s[:, 0] >= lo) & (s[:, 0] < hi)]
        out[name] = {"rss_mb_max": round(float(sel[:, 1].max()) / 2**20, 1) if len(sel) else None,
                     "fds_max": int(sel[:, 2].max()) if len(sel) else None}
    return out


def measured_client(cfg: StressConfig, addresses: list[str], *, workers: int = 1,
                    client_id: str = "stress") -> AsyncClient:
    """The client a run measures, as a production caller would have it: failover, health
    checks, idempotent retries (3), a hedge on the other replica when ``cfg.hedge``.  Against
    multi-worker replicas, warm connections spread over the workers: a request on a connection
    that died with its worker is re-sent at once on another (docs/deploy.md)."""
    return AsyncClient(addresses, timeout_s=cfg.timeout_s, max_retries=3, down_backoff_s=0.05,
                       max_down_backoff_s=0.5, health_interval_s=0.1,
                       warm_connections=2 * workers if workers > 1 else 1,
                       hedge=HedgePolicy() if cfg.hedge else None, client_id=client_id)


async def _measure(scenario: Scenario, env: Env) -> dict[str, Any]:
    cfg = env.config
    classes = class_plans(env.service_dir, cfg.mix or env.target.mix)
    client = measured_client(cfg, [r.address for r in env.replicas], workers=scenario.workers)
    await client.connect()
    plan = LoadPlan(cfg.rate_hz, cfg.seconds, env.target.keys, env.target.context, classes,
                    timeout_s=cfg.timeout_s, seed=cfg.seed)
    load = OpenLoad(client, plan)
    await scenario.begin(env)
    fs, fl = scenario.fault_window or (cfg.fault_start, cfg.fault_length)
    start = time.perf_counter_ns() + 50_000_000
    calm_from = start + round(cfg.warmup_s * 1e9)
    t1 = start + round(cfg.seconds * fs * 1e9)
    t2 = t1 + round(cfg.seconds * fl * 1e9)
    end = start + round(cfg.seconds * 1e9)
    marks: dict[str, int] = {}
    stop_sampling = asyncio.Event()

    async def drive() -> None:
        await sleep_until(t1)
        marks["t1"] = time.perf_counter_ns()
        await scenario.inject(env)
        await scenario.hold(env, t2)
        await scenario.remove(env)
        marks["t2"] = time.perf_counter_ns()

    async def sampler() -> None:
        while not stop_sampling.is_set():
            await asyncio.to_thread(env.sample)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_sampling.wait(), 0.25)

    sampling = asyncio.get_running_loop().create_task(sampler())
    fault = asyncio.get_running_loop().create_task(drive())
    try:
        out = await load.run(start)
        await fault
    finally:
        if not fault.done():
            fault.cancel()
        stop_sampling.set()
        await sampling
    extra = await scenario.finish(env)
    client_stats = client.statistics()
    await client.aclose()
    a, b = marks["t1"], max(marks["t2"], marks["t1"])
    budgets = np.array([round(c.budget_s * 1e9) for c in classes], dtype=np.int64)
    slack = round(cfg.late_slack_ms * 1e6)
    names = [c.name for c in classes]
    win = {"before": (calm_from, a), "during": (a, b), "after": (b, max(b, end))}
    windows: dict[str, Any] = {}
    for w, (lo, hi) in win.items():
        sel = (out.intended >= lo) & (out.intended < hi)
        windows[w] = {**window_figures(out, sel, budgets, slack),
                      "classes": class_figures(out, sel, names, budgets, slack),
                      "span_s": round((hi - lo) / 1e9, 3)}
    measured = out.intended >= calm_from
    total = window_figures(out, measured, budgets, slack)
    calm = (out.intended >= calm_from) & (out.intended < a)
    rec = recovery(out, calm, b, end, bin_s=cfg.bin_s, stable_s=cfg.stable_s)
    res: dict[str, Any] = {
        "scenario": scenario.name, "description": scenario.description,
        "lost": total["lost"], "late": total["late"], "sent": total["sent"], "shed": total["shed"],
        "degraded": total["degraded"],
        "recovery_s": rec,
    }
    for key in ("p50_ms", "p99_ms", "p999_ms"):
        for w in ("before", "during", "after"):
            res[f"{key}_{w}"] = windows[w][key]
    res.update({
        "fault": {"start_s": round((a - start) / 1e9, 3), "end_s": round((b - start) / 1e9, 3),
                  **extra},
        "windows": windows,
        "timeline": timeline(out, start, end, max(cfg.bin_s, cfg.seconds / 120)),
        "resources": _window_peaks(env, [(w, lo, hi) for w, (lo, hi) in win.items()]),
        "client": {k: v for k, v in client_stats.items() if isinstance(v, int | float)},
        "config": {**asdict(cfg), "mix": cfg.mix or env.target.mix,
                   "budgets_ms": {c.name: c.budget_s * 1e3 for c in classes}},
    })
    res["checks"] = scenario.checks(res, cfg)
    res["passed"] = all(res["checks"].values())
    return res
