"""What a stress run serves: a service directory, the keys and context it is asked about, and
the events that feed its stream views.

``trading_target()`` is the default: ``examples/trading`` (its models trained first when
missing, as ``tailguard demo`` does), asked about 8 instruments with a fixed quote, fed the
example's synthetic ticks.  Tests build a ``Target`` over the toy service.

``service_copy`` writes the directory a run serves: a copy of the service with, when the run
needs the shared online store, an ``[online]`` section (Redis backend; the URL is given to
each server with ``--online-url``) whose read timeout, heartbeat and breaker open period
are short enough for a fault run to see the breaker open and close (``ONLINE``).
"""

from __future__ import annotations

import importlib
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tailguard.spec import load_spec
from tailguard.stress.load import ClassPlan

__all__ = ["DEFAULT_MIX", "ONLINE", "Target", "class_plans", "service_copy", "trading_target"]

DEFAULT_MIX = "critical=0.2,normal=0.5,bulk=0.3"

#: Appended to a service without an [online] section when a scenario runs Redis.  The spec's URL
#: is never used (servers get --online-url).  A 50 ms read timeout, a 100 ms heartbeat and a
#: 250 ms first breaker open period (doubling per failed trial, see docs/stress.md).
ONLINE = """
[online]
backend = "redis"
url = "redis://127.0.0.1:1/0"
timeout = "50ms"
heartbeat = "100ms"
breaker_open = "250ms"
"""


@dataclass
class Target:
    """A service under stress.  ``events(n)``: ``n`` stream events stamped now (for the ingest
    worker and for writing features into Redis), or None when the service has no stream."""

    service_dir: Path
    keys: list[Any]
    context: dict[str, Any] | None
    entity: str
    events: Callable[[int], list[dict[str, Any]]] | None = None
    mix: str = DEFAULT_MIX


def _example_module(service_dir: Path, name: str) -> Any:
    if str(service_dir) not in sys.path:
        sys.path.insert(0, str(service_dir))
    return importlib.import_module(name)


def trading_target(service_dir: Path | None = None, log: Callable[[str], None] | None = None) -> Target:
    """The trading example (models trained first if missing or stale)."""
    from tailguard.demo.trading import default_service_dir, prepare

    d = (service_dir or default_service_dir()).resolve()
    prepare(d, log or (lambda s: None))
    ticks = _example_module(d, "ticks")
    symbols = [str(s) for s in ticks.SYMBOLS[:8]]
    pool: list[dict[str, Any]] = []

    def events(n: int) -> list[dict[str, Any]]:
        if len(pool) < n:
            cols = ticks.generate_ticks(max(60.0, n / 50.0), n_instruments=8, seed=3)
            fields = ("bid", "ask", "bid_size", "ask_size", "trade_size")
            lists = {k: cols[k].tolist() for k in fields}
            pool[:] = [{"instrument": s, **{k: lists[k][i] for k in fields}}
                       for i, s in enumerate(cols["symbol"].tolist())]
        now = time.time_ns()
        return [{**pool[i % len(pool)], "ts_ns": now + i} for i in range(n)]

    quote = {"bid": 189.98, "ask": 190.02, "bid_size": 300.0, "ask_size": 120.0}
    return Target(d, symbols, quote, "instrument", events)


def service_copy(target: Target, dest: Path, *, online: bool, budgets: str | None = None) -> Path:
    """Copy the service to ``dest`` (``[online]`` added when ``online`` and missing; the
    priority classes' budgets replaced by ``budgets``, ``name=duration,...``)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(target.service_dir, dest, ignore=shutil.ignore_patterns(".tailguard", "__pycache__"))
    spec = dest / "service.toml"
    text = spec.read_text()
    if online and "[online]" not in text:
        text += ONLINE
    if budgets:
        text = with_budgets(text, budgets)
    spec.write_text(text)
    if budgets:
        try:
            load_spec(dest)
        except Exception as exc:
            from tailguard.stress.problems import StressError

            raise StressError(f"--budgets {budgets!r}: {exc}") from exc
    return dest


def with_budgets(text: str, budgets: str) -> str:
    """``text`` (a service.toml) with the ``budget`` of each ``[[priorities]]`` table named in
    ``budgets`` (``critical=10ms,normal=20ms``) replaced."""
    from tailguard.stress.problems import StressError

    wanted: dict[str, str] = {}
    for part in budgets.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or not name or not value.strip():
            raise StressError(f"--budgets wants name=duration,... (got {part!r})")
        wanted[name] = value.strip()
    tables = re.split(r"(?m)^(?=\s*\[)", text)
    seen = set()
    for i, table in enumerate(tables):
        if not table.lstrip().startswith("[[priorities]]"):
            continue
        m = re.search(r'(?m)^\s*name\s*=\s*"([^"]+)"', table)
        if m is None or m.group(1) not in wanted:
            continue
        line = f'budget = "{wanted[m.group(1)]}"'
        table, n = re.subn(r"(?m)^\s*budget\s*=.*$", line, table, count=1)
        tables[i] = table if n else table.replace(m.group(0), f"{m.group(0)}\n{line}", 1)
        seen.add(m.group(1))
    missing = sorted(set(wanted) - seen)
    if missing:
        raise StressError(f"--budgets names classes the service does not declare: {missing}")
    return "".join(tables)


def class_plans(service_dir: Path, mix: str) -> list[ClassPlan]:
    """The classes of ``mix`` (``name=weight,...``) with their budgets from the service spec."""
    budgets = {p.name: float(p.budget) for p in load_spec(service_dir).priorities}
    out: list[ClassPlan] = []
    for part in mix.split(","):
        name, _, w = part.strip().partition("=")
        if name not in budgets:
            from tailguard.stress.problems import StressError

            raise StressError(f"priority class {name!r} is not declared (declared: {sorted(budgets)})")
        out.append(ClassPlan(name, float(w or 1.0), budgets[name]))
    return out
