"""The ``worker-crash`` scenario: SIGKILL one worker of a two-worker replica, under load.

One replica runs ``tailguard serve --workers 2``: a supervisor that binds the listener once
and starts two worker processes sharing its accept queue (``tailguard.serve.workers``).
Every ``crash_every_s`` during the fault the scenario kills one worker (``SIGKILL``, the
workers alternate) and then, off the event loop:

- probes the listener once with a fresh connection while the replacement is still starting:
  the connection must be accepted and answered by the surviving worker (the kill must not
  take the socket down with it);
- polls the supervisor's ready file (rewritten once every worker serves again, with the new
  pids and the supervisor's restart count) until the killed pid is gone and two workers
  serve: the time from the kill to then is the supervisor's *restart latency* (noticing the
  death, its back-off, a fresh interpreter, loading and warming the service).

Kills never overlap: the next waits until the previous replacement serves, so one worker
always accepts.  The fault ends when the last replacement serves; requests in flight on the
killed worker's connections are retried by the client on a new connection (idempotent, within
their budget).  Checks: ``no_lost_requests``, ``recovered_within_2s``, ``workers_restarted``
(the supervisor restarted as many workers as were killed and two serve at the end) and
``survivor_accepted`` (every probe answered by the surviving worker).

Loop ownership: the hooks run on the runner's event loop; kills and ready-file polls run in
worker threads so the load keeps its schedule.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from typing import Any

from tailguard.client import AsyncClient, ClientError
from tailguard.schema.wire import Status
from tailguard.stress.cluster import Replica
from tailguard.stress.problems import StressError
from tailguard.stress.runner import Env, StressConfig, sleep_until
from tailguard.stress.scenarios import Scenario

__all__ = ["WorkerCrash", "served_workers"]

#: How often the supervisor's ready file is read while a replacement starts (seconds).
POLL_S = 0.005


def served_workers(replica: Replica) -> tuple[list[int], int]:
    """The worker pids the supervisor last published as all serving, and its restart count."""
    if replica.server is None:
        raise StressError("the replica is not running")
    info = replica.server.refresh()
    return [int(p) for p in info.get("workers", [])], int(info.get("restarts", 0))


def wait_replaced(replica: Replica, victim: int, restarts: int, timeout_s: float) -> list[int]:
    """Block until the supervisor publishes a full set of workers without ``victim`` and a
    restart count above ``restarts``; the new pids.  ``StressError`` after ``timeout_s`` or
    when the supervisor itself died."""
    end = time.monotonic() + timeout_s
    while True:
        pids, n = served_workers(replica)
        if victim not in pids and len(pids) == replica.workers and n > restarts:
            return pids
        if not replica.alive:
            raise StressError(f"the supervisor died after worker {victim} was killed:\n"
                              f"{replica.log()[-2000:]}")
        if time.monotonic() > end:
            raise StressError(f"worker {victim} not replaced within {timeout_s} s:\n{replica.log()[-2000:]}")
        time.sleep(POLL_S)  # polling another process's file with a deadline


class WorkerCrash(Scenario):
    """SIGKILL one worker of a ``--workers 2`` replica every ``crash_every_s``; the supervisor
    must replace it while the other worker keeps accepting (see the module docstring)."""

    name = "worker-crash"
    description = ("1 replica with 2 workers; SIGKILL one worker every crash_every_s under load, "
                   "the supervisor restarts it")
    workers = 2
    fault_window = (0.3, 0.4)

    def __init__(self) -> None:
        self.kills: list[float] = []  # perf_counter() of each kill
        self.restart_s: list[float] = []
        self.probes: list[dict[str, Any]] = []
        self.replica: Replica | None = None
        self.restarts_before = 0
        self._n = 0

    @property
    def _replica(self) -> Replica:
        if self.replica is None:
            raise StressError("worker-crash: setup has not run")
        return self.replica

    def setup(self, env: Env) -> None:
        """Check the replica runs two workers; remember the supervisor's restart count."""
        self.replica = env.replicas[0]
        pids, self.restarts_before = served_workers(self._replica)
        if len(pids) != self.workers:
            raise StressError(f"expected {self.workers} workers, the supervisor reports {pids}")

    async def _probe(self, env: Env, survivor: int) -> None:
        """One request on a fresh connection while the killed worker's replacement starts."""
        t = env.target
        client = AsyncClient(self._replica.address, timeout_s=1.0, max_retries=0, client_id="stress-probe")
        probe: dict[str, Any] = {"survivor": survivor}
        try:
            probe["worker"] = (await client.welcome()).worker
            r = await client.predict(t.keys[0], t.context, idempotent=True)
            probe["status"] = r.status.name.lower()
        except ClientError as exc:
            probe["status"] = exc.code
        finally:
            await client.aclose()
        probe["ok"] = probe["status"] == Status.OK.name.lower() and probe.get("worker") == survivor
        self.probes.append(probe)

    async def _crash(self, env: Env) -> None:
        """Kill one worker, probe the survivor, wait for the replacement (timed)."""
        r = self._replica
        pids, restarts = await asyncio.to_thread(served_workers, r)
        victim = pids[self._n % len(pids)]
        survivor = next(p for p in pids if p != victim)
        self._n += 1
        self.kills.append(time.perf_counter())
        os.kill(victim, signal.SIGKILL)
        await self._probe(env, survivor)
        await asyncio.to_thread(wait_replaced, r, victim, restarts, r.ready_timeout_s)
        self.restart_s.append(round(time.perf_counter() - self.kills[-1], 3))

    async def inject(self, env: Env) -> None:
        """The first kill (returns once its replacement serves)."""
        await self._crash(env)

    async def hold(self, env: Env, until_ns: int) -> None:
        """Further kills every ``crash_every_s`` (never before the previous replacement serves)
        while before ``until_ns``."""
        every_ns = round(env.config.crash_every_s * 1e9)
        nxt = round(self.kills[0] * 1e9) + every_ns
        while nxt < until_ns:
            await sleep_until(nxt)
            await self._crash(env)
            nxt = max(nxt + every_ns, time.perf_counter_ns())
        await sleep_until(until_ns)

    async def finish(self, env: Env) -> dict[str, Any]:
        """Kills, the supervisor's restarts and restart latency, the probes."""
        pids, restarts = await asyncio.to_thread(served_workers, self._replica)
        lat = self.restart_s
        return {"kills": len(self.kills), "worker_restarts": restarts - self.restarts_before,
                "workers_serving": len(pids), "supervisor_alive": self._replica.alive,
                "restart_s": lat,
                "restart_s_median": round(statistics.median(lat), 3) if lat else None,
                "restart_s_max": max(lat) if lat else None,
                "probes": self.probes}

    def checks(self, res: dict[str, Any], cfg: StressConfig) -> dict[str, bool]:
        """No lost request, recovery <= 2 s, every kill restarted, the survivor accepted."""
        f = res["fault"]
        return {"no_lost_requests": res["lost"] == 0,
                "recovered_within_2s": res["recovery_s"] is not None and res["recovery_s"] <= 2.0,
                "workers_restarted": f["kills"] > 0 and f["worker_restarts"] == f["kills"]
                and f["workers_serving"] == self.workers and f["supervisor_alive"],
                "survivor_accepted": bool(f["probes"]) and all(p["ok"] for p in f["probes"])}
