"""Helpers of the fault-injection tests: the toy target's keys and events, a short run's
configuration, running a scenario and explaining a failed bound.  (A module of its own, not
the conftest: several ``conftest`` modules share one name on ``sys.path``.)"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from tailguard.stress.runner import StressConfig, run_scenario
from tailguard.stress.scenarios import SCENARIOS
from tailguard.stress.target import Target

KEYS = ["a", "b", "c", "d", "e", "f", "g", "h"]
_SEQ = itertools.count()


def events(n: int) -> list[dict[str, Any]]:
    """``n`` stream events for the toy service (keys round-robin), stamped now."""
    now = time.time_ns()
    out = []
    for i in range(n):
        k = next(_SEQ)
        out.append({"item": KEYS[k % len(KEYS)], "ts_ns": now + i, "price": 100.0 + k % 7, "size": 3.0})
    return out


def config(**overrides: Any) -> StressConfig:
    """A short run: 7 s at 200 requests/s, 1.5 s warm-up, 25 ms late slack."""
    base: dict[str, Any] = {"seconds": 7.0, "rate_hz": 200.0, "warmup_s": 1.5, "late_slack_ms": 25.0}
    return StressConfig(**{**base, **overrides})


def run(name: str, target: Target, workdir: Path, **overrides: Any) -> dict[str, Any]:
    """Run scenario ``name`` on ``target``; its result."""
    return run_scenario(SCENARIOS[name](), target, config(**overrides), workdir)


def explain(res: dict[str, Any]) -> str:
    """What to print when a bound fails: the summary, windows and scenario counts."""
    w = {k: {x: v[x] for x in ("sent", "lost", "errors", "late", "degraded", "p99_ms", "flags")}
         for k, v in res["windows"].items()}
    return f"checks={res['checks']} recovery_s={res['recovery_s']} fault={res['fault']} windows={w}"
