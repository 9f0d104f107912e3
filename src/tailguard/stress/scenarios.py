"""The fault scenarios: what each needs, how it injects and removes its fault, what it must hold.

Every scenario is a ``Scenario`` with the same hooks, called by ``runner.run_scenario``:
``setup`` (synchronous, after the replicas started), ``begin`` (on the loop, before the
load), ``inject`` at the fault's start, ``hold`` until its planned end, ``remove``, then
``finish`` after the load (what the scenario counted) and ``teardown``.  Blocking work
(killing and restarting processes) runs in worker threads, so the load keeps its schedule.

``checks`` turns the issue's bounds into named booleans (docs/stress.md lists them):
``no_lost_requests`` everywhere; ``recovered_within_2s`` where a dependency or model comes
back; ``critical_p99_within_budget`` (client-side p99 of the critical class during the fault
within its budget plus the late slack) for the Redis faults; ``ladder_answered`` for model
faults; ``p999_within_5x_calm`` for worker kills; descriptor and code checks for the abusive
clients.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tailguard.stress.attacks import DisconnectStorm, Oversize
from tailguard.stress.runner import Env, StressConfig, sleep_until

__all__ = ["SCENARIOS", "Scenario"]


class Scenario:
    """Base: no dependencies, one replica, no fault (hooks are no-ops)."""

    name = ""
    description = ""
    redis = False
    nats = False
    proxy = False
    replicas = 1
    #: Worker processes per replica (``tailguard serve --workers``).
    workers = 1
    max_frame = False
    #: (start, length) of the fault as fractions of the run; None: the config's.
    fault_window: tuple[float, float] | None = None

    def setup(self, env: Env) -> None:
        """Before the load, synchronously (replicas are up)."""

    async def begin(self, env: Env) -> None:
        """Before the load, on the loop."""

    async def inject(self, env: Env) -> None:
        """Start the fault."""

    async def hold(self, env: Env, until_ns: int) -> None:
        """Keep the fault going until ``until_ns`` (default: just wait)."""
        await sleep_until(until_ns)

    async def remove(self, env: Env) -> None:
        """End the fault; return once the faulty part serves again."""

    async def finish(self, env: Env) -> dict[str, Any]:
        """After the load: what the scenario counted (merged into ``fault``)."""
        return {}

    def teardown(self, env: Env) -> None:
        """Stop what ``setup``/``begin`` started (always called)."""

    def checks(self, res: dict[str, Any], cfg: StressConfig) -> dict[str, bool]:
        """The bounds this scenario must hold, by name."""
        return {"no_lost_requests": res["lost"] == 0}


def _recovered(res: dict[str, Any], within_s: float = 2.0) -> bool:
    return res["recovery_s"] is not None and res["recovery_s"] <= within_s


def _critical_p99(res: dict[str, Any], cfg: StressConfig) -> dict[str, bool]:
    """``critical_p99_within_budget`` when the mix has a critical class (else no check)."""
    crit = res["windows"]["during"]["classes"].get("critical")
    if crit is None:
        return {}
    ok = crit["p99_ms"] is not None and crit["p99_ms"] <= crit["budget_ms"] + cfg.late_slack_ms
    return {"critical_p99_within_budget": bool(ok)}


class WorkerKill(Scenario):
    """kill -9 one of two replicas every ``kill_every_s``, restart it, alternate replicas."""

    name = "worker-kill"
    description = "2 replicas; SIGKILL one every kill_every_s under load and restart it"
    replicas = 2
    fault_window = (0.15, 0.55)

    def __init__(self) -> None:
        self.kills: list[float] = []
        self.restart_s: list[float] = []
        self._n = 0

    async def _kill_restart(self, env: Env) -> None:
        r = env.replicas[self._n % len(env.replicas)]
        self._n += 1
        self.kills.append(time.perf_counter())
        await asyncio.to_thread(r.kill)
        t = time.perf_counter()
        await asyncio.to_thread(r.start)
        self.restart_s.append(round(time.perf_counter() - t, 3))

    async def inject(self, env: Env) -> None:
        """Kill the first replica and restart it."""
        await self._kill_restart(env)

    async def hold(self, env: Env, until_ns: int) -> None:
        """Further kills every ``kill_every_s`` while before ``until_ns``."""
        every_ns = round(env.config.kill_every_s * 1e9)
        nxt = round(self.kills[0] * 1e9) + every_ns
        while nxt < until_ns:
            await sleep_until(nxt)
            await self._kill_restart(env)
            nxt += every_ns
        await sleep_until(until_ns)

    async def finish(self, env: Env) -> dict[str, Any]:
        """Kills made and how long each restart took."""
        return {"kills": len(self.kills), "restart_s": self.restart_s}

    def checks(self, res: dict[str, Any], cfg: StressConfig) -> dict[str, bool]:
        """No lost request; p99.9 during the kills within 5x the calm p99.9."""
        before, during = res["p999_ms_before"], res["p999_ms_during"]
        return {"no_lost_requests": res["lost"] == 0,
                "p999_within_5x_calm": before is not None and during is not None and during <= 5 * before}


class RedisRestart(Scenario):
    """Kill redis-server (SIGKILL), start it again (empty) on the same port."""

    name = "redis-restart"
    description = "online store outage: redis-server killed, restarted empty on the same port"
    redis = True

    async def inject(self, env: Env) -> None:
        """Kill Redis."""
        assert env.redis is not None
        await asyncio.to_thread(env.redis.stop)

    async def remove(self, env: Env) -> None:
        """Start Redis; returns once it answers PING."""
        assert env.redis is not None
        await asyncio.to_thread(env.redis.start)

    def checks(self, res: dict[str, Any], cfg: StressConfig) -> dict[str, bool]:
        """No lost request, critical p99 within budget during the outage, recovery <= 2 s."""
        return {"no_lost_requests": res["lost"] == 0, **_critical_p99(res, cfg),
                "recovered_within_2s": _recovered(res)}


class SlowDependency(RedisRestart):
    """A delaying proxy in front of Redis holds every answer for ``delay_ms``."""

    name = "slow-dependency"
    description = "Redis answers slowly: a TCP proxy delays its replies by delay_ms"
    proxy = True

    async def inject(self, env: Env) -> None:
        """Delay Redis' answers."""
        assert env.proxy is not None
        env.proxy.delay_s = env.config.delay_ms / 1e3

    async def remove(self, env: Env) -> None:
        """Stop delaying."""
        assert env.proxy is not None
        env.proxy.delay_s = 0.0

    async def finish(self, env: Env) -> dict[str, Any]:
        """The delay and what the proxy carried."""
        assert env.proxy is not None
        return {"delay_ms": env.config.delay_ms, "proxied_connections": env.proxy.connections,
                "bytes_delayed": env.proxy.bytes_delayed}


class ModelFault(Scenario):
    """The first rung's model turns slow (``slow``) or raises (``raise``) on every replica."""

    mode = "slow"

    async def inject(self, env: Env) -> None:
        """Switch the fault on."""
        cfg = env.config
        for r in env.replicas:
            await asyncio.to_thread(r.set_chaos, self.mode, factor=cfg.slow_factor,
                                    floor_ms=cfg.slow_floor_ms)

    async def remove(self, env: Env) -> None:
        """Switch it off."""
        for r in env.replicas:
            await asyncio.to_thread(r.set_chaos, "off")

    def checks(self, res: dict[str, Any], cfg: StressConfig) -> dict[str, bool]:
        """No lost request, the ladder answered during the fault, recovery <= 2 s."""
        return {"no_lost_requests": res["lost"] == 0,
                "ladder_answered": res["windows"]["during"]["degraded"] > 0,
                "recovered_within_2s": _recovered(res)}


class SlowModel(ModelFault):
    """The primary model 10x slower (and at least slow_floor_ms more per call)."""

    name = "slow-model"
    description = "the primary model becomes slow_factor times slower (at least slow_floor_ms per call)"
    mode = "slow"


class RaisingModel(ModelFault):
    """The primary model raises on every call."""

    name = "raising-model"
    description = "the primary model raises on every call"
    mode = "raise"


class DisconnectStormScenario(Scenario):
    """Many clients connect and drop abruptly while the measured client runs."""

    name = "disconnect-storm"
    description = "storm_rate_hz connections/s dropped abruptly (reset) in four ways"

    def __init__(self) -> None:
        self.storm: DisconnectStorm | None = None
        self._task: asyncio.Task[None] | None = None
        self.fds: dict[str, int] = {}

    async def inject(self, env: Env) -> None:
        """Start the storm."""
        self.fds["before"] = sum(r.open_fds() for r in env.replicas)
        t = env.target
        self.storm = DisconnectStorm([r.address for r in env.replicas], t.keys[0], t.context,
                                     rate_hz=env.config.storm_rate_hz)
        self._task = asyncio.get_running_loop().create_task(self.storm.run())

    async def remove(self, env: Env) -> None:
        """Stop it (connections in progress finish dropping)."""
        assert self.storm is not None and self._task is not None
        self.storm.stop()
        await self._task

    async def finish(self, env: Env) -> dict[str, Any]:
        """Connections dropped; server descriptors before the storm and after the run."""
        assert self.storm is not None
        self.fds["after"] = sum(r.open_fds() for r in env.replicas)
        return {**self.storm.statistics(), "server_fds": self.fds,
                "servers_alive": all(r.alive for r in env.replicas)}

    def checks(self, res: dict[str, Any], cfg: StressConfig) -> dict[str, bool]:
        """No lost request, servers alive, no descriptor left behind (4 of slack)."""
        f = res["fault"]
        return {"no_lost_requests": res["lost"] == 0, "servers_alive": f["servers_alive"],
                "no_fd_leak": f["server_fds"]["after"] <= f["server_fds"]["before"] + 4,
                "recovered_within_2s": _recovered(res)}


STABLE_REFUSALS = {"frame_too_large", "invalid_request", "queue_full", "predicted_late", "shed_overload",
                   "rate_limited", "expired", "ok"}


class OversizedRequests(Scenario):
    """Frames over ``--max-frame`` and huge batches, while the measured client runs."""

    name = "oversized-requests"
    description = "frames over --max-frame and batches near/over it; server must refuse with stable codes"
    max_frame = True

    def __init__(self) -> None:
        self.attack: Oversize | None = None
        self._task: asyncio.Task[None] | None = None

    async def inject(self, env: Env) -> None:
        """Start sending oversized requests."""
        t = env.target
        self.attack = Oversize(env.replicas[0].address, env.config.max_frame, t.keys, t.context)
        self._task = asyncio.get_running_loop().create_task(self.attack.run())

    async def remove(self, env: Env) -> None:
        """Stop after the current round."""
        assert self.attack is not None and self._task is not None
        self.attack.stop()
        await self._task

    async def finish(self, env: Env) -> dict[str, Any]:
        """Outcomes by kind and code; whether the servers live."""
        assert self.attack is not None
        return {**self.attack.statistics(), "servers_alive": all(r.alive for r in env.replicas)}

    def checks(self, res: dict[str, Any], cfg: StressConfig) -> dict[str, bool]:
        """No lost request; every oversized frame refused with frame_too_large and its connection
        closed; batches over the limit refused, near it served or refused, with stable codes."""
        codes = res["fault"]["codes"]
        frames = codes["oversize_frame"]
        return {
            "no_lost_requests": res["lost"] == 0,
            "servers_alive": res["fault"]["servers_alive"],
            "oversize_frames_refused": bool(frames) and set(frames) <= {"frame_too_large", "closed_after"}
            and frames.get("frame_too_large", 0) == frames.get("closed_after", 0),
            "over_limit_batches_refused": bool(codes["batch_over_limit"])
            and set(codes["batch_over_limit"]) == {"frame_too_large"},
            "near_limit_batches_stable": bool(codes["batch_near_limit"])
            and set(codes["batch_near_limit"]) <= STABLE_REFUSALS,
        }


def _nats_restart() -> Scenario:
    from tailguard.stress.natsscenario import NatsRestart

    return NatsRestart()


def _worker_crash() -> Scenario:
    from tailguard.stress.workercrash import WorkerCrash

    return WorkerCrash()


SCENARIOS: dict[str, Any] = {
    "worker-kill": WorkerKill,
    "worker-crash": _worker_crash,
    "redis-restart": RedisRestart,
    "nats-restart": _nats_restart,
    "slow-model": SlowModel,
    "raising-model": RaisingModel,
    "slow-dependency": SlowDependency,
    "disconnect-storm": DisconnectStormScenario,
    "oversized-requests": OversizedRequests,
}
