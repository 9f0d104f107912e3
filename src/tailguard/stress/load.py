"""Open-loop load through the real client, one outcome per request.

Requests are due at fixed-rate *intended* times decided before the run; each is sent as its
own task on the event loop whatever happened to the earlier ones, through
``tailguard.client.AsyncClient`` (failover, health checks, idempotent retries), with the
class budget on the wire and a generous client timeout (``timeout_s``), so that a request
the system failed to answer shows up as *lost* rather than being cut short by the
generator.  Every request has an index (its request id here): the outcome arrays below
say, per id, when it was due, when its answer (or final error) came, whether it succeeded,
the error code, whether the answer was degraded, the server's own time and the attempts.

Owned by the event loop it runs on; the arrays are read after ``run`` returns (or, for the
soak's per-minute figures, between chunks by the same loop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tailguard.client import AsyncClient, ClientError
from tailguard.decision import Flag

__all__ = ["DEGRADED_FLAGS", "ClassPlan", "LoadPlan", "OpenLoad", "Outcomes"]

#: A reply carrying any of these bits was not the service's normal answer.
DEGRADED_FLAGS = int(Flag.FALLBACK | Flag.MODEL_FAILED | Flag.DEGRADED | Flag.FEATURES_UNAVAILABLE
                     | Flag.DEADLINE_MISSED)


@dataclass(frozen=True)
class ClassPlan:
    """One priority class of the load: name, share of requests and budget (seconds)."""

    name: str
    weight: float
    budget_s: float


@dataclass
class LoadPlan:
    """What to send: ``rate_hz`` requests per second for ``duration_s``, keys and one request
    context drawn round-robin, classes drawn by weight; ``timeout_s`` is the client timeout
    (budget on the wire, patience in the client)."""

    rate_hz: float
    duration_s: float
    keys: list[Any]
    context: Mapping[str, Any] | None
    classes: list[ClassPlan]
    timeout_s: float = 2.0
    seed: int = 1
    batch: int = 0  # > 0: each request is a batch of this many keys
    extra: dict[str, Any] = field(default_factory=dict)


class Outcomes:
    """Per-request results of one run (index = request id); ``codes`` names error codes."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.intended = np.zeros(n, dtype=np.int64)
        self.done = np.zeros(n, dtype=np.int64)
        self.cls = np.zeros(n, dtype=np.int16)
        self.ok = np.zeros(n, dtype=bool)
        self.answered = np.zeros(n, dtype=bool)  # done is set (success or final error)
        self.error = np.zeros(n, dtype=np.int16)  # 0: none, else 1 + index into codes
        self.degraded = np.zeros(n, dtype=bool)
        self.flags = np.zeros(n, dtype=np.uint8)  # decision flag bits (a batch: OR of its rows)
        self.server_ns = np.zeros(n, dtype=np.int64)
        self.attempts = np.zeros(n, dtype=np.int16)
        self.codes: list[str] = []

    def code_index(self, code: str) -> int:
        """1 + the index of ``code`` in ``codes`` (added when new)."""
        try:
            return self.codes.index(code) + 1
        except ValueError:
            self.codes.append(code)
            return len(self.codes)

    def latency_ns(self) -> np.ndarray:
        """Answer time minus intended time (ns), per request (meaningless where not answered)."""
        return self.done - self.intended

    def error_counts(self, sel: np.ndarray | None = None) -> dict[str, int]:
        """Final errors by code (over ``sel``, a boolean mask, when given)."""
        err = self.error if sel is None else self.error[sel]
        counts = np.bincount(err, minlength=len(self.codes) + 1)
        return {self.codes[i - 1]: int(counts[i]) for i in range(1, len(counts)) if counts[i]}


class OpenLoad:
    """Sends ``plan`` through ``client`` open-loop (see the module docstring)."""

    def __init__(self, client: AsyncClient, plan: LoadPlan, *, clock: Any = time.perf_counter_ns) -> None:
        self.client = client
        self.plan = plan
        self.clock = clock
        n = max(1, int(plan.rate_hz * plan.duration_s))
        self.out = Outcomes(n)
        rng = np.random.default_rng(plan.seed)
        w = np.array([c.weight for c in plan.classes], dtype=np.float64)
        self.out.cls[:] = rng.choice(len(plan.classes), size=n, p=w / w.sum()) if len(w) > 1 else 0
        self._budgets_us = [max(1, round(c.budget_s * 1e6)) for c in plan.classes]
        self._tasks: set[asyncio.Task[None]] = set()
        self.start_ns = 0
        self.sent = 0

    async def run(self, start_ns: int | None = None, *, drain_s: float | None = None) -> Outcomes:
        """Send every request at its intended time (from ``start_ns``, default now + 20 ms),
        then wait for the answers (at most ``drain_s``, default the client timeout + 1 s)."""
        plan, out, clock = self.plan, self.out, self.clock
        self.start_ns = start = start_ns if start_ns is not None else clock() + 20_000_000
        period = 1e9 / plan.rate_hz
        out.intended[:] = start + np.round(np.arange(out.n) * period).astype(np.int64)
        for i in range(out.n):
            due = int(out.intended[i])
            gap = due - clock()
            if gap > 0:  # never early; the loop's ~1 ms timer slack counts against the system
                await asyncio.sleep(gap / 1e9)
            task = asyncio.get_running_loop().create_task(self._one(i))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            self.sent = i + 1
            if i % 64 == 63:
                await asyncio.sleep(0)  # let replies in even when behind schedule
        await self.drain(drain_s if drain_s is not None else plan.timeout_s + 1.0)
        return out

    async def drain(self, timeout_s: float) -> None:
        """Wait for outstanding requests (those still out after ``timeout_s`` stay unanswered)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)

    async def _one(self, i: int) -> None:
        plan, out = self.plan, self.out
        c = int(out.cls[i])
        keys = plan.keys
        try:
            if plan.batch > 0:
                ks = [keys[(i + j) % len(keys)] for j in range(plan.batch)]
                b = await self.client.predict_batch(
                    ks, plan.context, priority=plan.classes[c].name, budget_us=self._budgets_us[c],
                    timeout_s=plan.timeout_s, idempotent=True)
                flags = 0
                for f in b.flags:
                    flags |= int(f)
                timings, attempts = b.timings_ns, b.attempts
            else:
                r = await self.client.predict(
                    keys[i % len(keys)], plan.context, priority=plan.classes[c].name,
                    budget_us=self._budgets_us[c], timeout_s=plan.timeout_s, idempotent=True)
                flags = int(r.flags)
                timings, attempts = r.timings_ns, r.attempts
        except ClientError as exc:
            out.done[i] = self.clock()
            out.answered[i] = True
            out.error[i] = out.code_index(exc.code)
            return
        out.done[i] = self.clock()
        out.answered[i] = True
        out.ok[i] = True
        out.degraded[i] = bool(flags & DEGRADED_FLAGS)
        out.flags[i] = flags & 0xFF
        out.server_ns[i] = timings.get("server_total", 0)
        out.attempts[i] = attempts
