"""Helpers of the rollout tests: plans, candidates with controlled behaviour, a traffic loop."""

from __future__ import annotations

from typing import Any

from toyservice import CTX

from tailguard import Service
from tailguard.models.repository import LoadedModel
from tailguard.registry.swap import prepare_swap
from tailguard.rollout import Guards, Rollout, RolloutPlan, Stage, StageKind
from tailguard.testing import FakeClock

GUARDS = Guards(p99_latency_s=300e-6, max_error_rate=0.01, min_window_samples=50)


def canary_plan(*shares: float, guards: Guards = GUARDS, min_samples: int = 10_000,
                promote: bool = False) -> RolloutPlan:
    """Canary stages at ``shares`` (each held for ``min_samples``), then promote if asked."""
    stages = [Stage(kind=StageKind.CANARY, share=s, min_samples=min_samples, guards=guards) for s in shares]
    if promote:
        stages.append(Stage(kind=StageKind.PROMOTE))
    return RolloutPlan(model="primary", version="2", stages=tuple(stages), window_s=10.0)


def candidate(svc: Service) -> LoadedModel:
    """primary/2 loaded, verified and warmed up aside (as ``Rollout`` would)."""
    prepared = prepare_swap(svc, "primary", "2", warmup=2)
    prepared.warm.run_all()
    return prepared.model


def traffic(rollout: Rollout, clock: FakeClock, n: int, *, step_s: float = 1e-3, drain_every: int = 10,
            keys: int = 5000) -> list[Any]:
    """``n`` decisions through the rollout, one every ``step_s`` of fake time, for ``keys`` distinct
    routing keys, with the side path run every ``drain_every`` decisions."""
    out = []
    for i in range(n):
        out.append(rollout.predict(f"k{i % keys}", CTX))
        clock.advance(step_s)
        if i % drain_every == drain_every - 1:
            rollout.drain()
    return out
