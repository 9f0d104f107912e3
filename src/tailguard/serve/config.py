"""The scheduler's configuration, derived from the service spec and the loaded engine."""

from __future__ import annotations

from tailguard.engine import Engine
from tailguard.scheduler import ClassPolicy, RateLimit, SchedulerConfig
from tailguard.spec import RungKind, ServiceSpec

__all__ = ["scheduler_config"]


def scheduler_config(spec: ServiceSpec, engine: Engine) -> SchedulerConfig:
    """Queue policies per priority class and batching limits from ``[serving]``.  Rungs that
    are not models (last good, default) are *cheap*: they may answer at the door."""
    serving = spec.serving
    classes = tuple(
        ClassPolicy(
            name=p.name,
            level=p.level,
            budget_ns=round(p.budget * 1e9),
            max_queue_size=p.max_queue_size,
            on_timeout=p.on_timeout,
        )
        for p in sorted(spec.priorities, key=lambda p: p.level)
    )
    rl = serving.rate_limit
    return SchedulerConfig(
        classes=classes,
        n_rungs=len(engine.rungs),
        cheap_rungs=frozenset(i for i, r in enumerate(spec.ladder) if r.kind is not RungKind.MODEL),
        max_batch_size=min(serving.max_batch_size, 4096),
        max_queue_delay_ns=round(serving.max_queue_delay * 1e9),
        starvation_guard_ns=round(serving.starvation_guard * 1e9),
        max_total_queued=serving.max_total_queued,
        rate_limit=RateLimit(rate_per_s=rl.rate, burst=rl.burst) if rl is not None else None,
        default_class=spec.default_priority,
        batch_share=serving.batch_share,
    )
