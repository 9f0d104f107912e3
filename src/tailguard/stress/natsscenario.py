"""The ``nats-restart`` scenario: nats-server killed and restarted while the ingest worker
feeds Redis from it and the replicas serve from Redis.

Bounds: nothing published is lost (the worker applied every message JetStream acknowledged:
redelivery after the restart), no lost request, serving back to calm within 2 s (it should
never have left it: serving does not read NATS).
"""

from __future__ import annotations

import asyncio
from typing import Any

from tailguard.stress.natsfault import IngestWorker, Publisher, caught_up
from tailguard.stress.problems import StressError
from tailguard.stress.runner import Env, StressConfig
from tailguard.stress.scenarios import Scenario

__all__ = ["NatsRestart"]


class NatsRestart(Scenario):
    """See the module docstring."""

    name = "nats-restart"
    description = "nats-server killed and restarted while `tailguard features ingest` feeds Redis"
    redis = True
    nats = True

    def __init__(self) -> None:
        self.worker: IngestWorker | None = None
        self.publisher: Publisher | None = None
        self._task: asyncio.Task[Any] | None = None

    def setup(self, env: Env) -> None:
        """Start the ingest worker."""
        assert env.nats is not None and env.redis is not None
        if env.target.events is None:
            raise StressError("nats-restart needs a target with stream events")
        self.worker = IngestWorker(env.service_dir, env.nats.url, env.redis.url, env.workdir / "ingest")
        self.worker.start()

    async def begin(self, env: Env) -> None:
        """Start publishing."""
        assert env.nats is not None and env.target.events is not None
        self.publisher = Publisher(env.nats.url, env.target.events)
        # Its own loop on its own thread: NATS reconnects must not delay the measured load's sends.
        self._task = asyncio.get_running_loop().create_task(
            asyncio.to_thread(asyncio.run, self.publisher.run()))
        # The worker's start (imports, the service's transforms) is not part of the fault.
        await caught_up(env.nats.url, timeout_s=60.0, at_least_seq=1, drained=False)

    async def inject(self, env: Env) -> None:
        """Kill NATS."""
        assert env.nats is not None
        await asyncio.to_thread(env.nats.stop)

    async def remove(self, env: Env) -> None:
        """Start NATS again (same port and store)."""
        assert env.nats is not None
        await asyncio.to_thread(env.nats.start)

    async def finish(self, env: Env) -> dict[str, Any]:
        """Stop publishing, wait for the consumer to drain, stop the worker, compare."""
        assert self.publisher is not None and self._task is not None and self.worker is not None
        assert env.nats is not None
        self.publisher.stop_threadsafe()
        await self._task
        consumer = await caught_up(env.nats.url)
        stats = await asyncio.to_thread(self.worker.stop)
        applied = int(stats.get("applied_seq") or 0)
        p = self.publisher
        return {"published_messages": p.published, "published_events": p.events_published,
                "publish_retries": p.retries, "last_published_seq": p.last_seq, "applied_seq": applied,
                "messages_lost": max(0, p.last_seq - applied), "consumer": consumer,
                "ingest": {k: stats.get(k) for k in ("messages", "connects", "failures", "consumer_resets",
                                                     "committed_seq", "fatal", "error")}}

    def teardown(self, env: Env) -> None:
        """Stop the worker if it still runs."""
        if self.worker is not None and self.worker.proc is not None:
            self.worker.stop()

    def checks(self, res: dict[str, Any], cfg: StressConfig) -> dict[str, bool]:
        """Nothing published lost, no lost request, serving calm within 2 s."""
        f = res["fault"]
        return {"no_lost_events": f["messages_lost"] == 0 and f["published_messages"] > 0,
                "no_lost_requests": res["lost"] == 0,
                "recovered_within_2s": res["recovery_s"] is not None and res["recovery_s"] <= 2.0}
