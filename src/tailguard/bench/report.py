"""The common parts of a serving run's report (the examples' ``run.py``): measuring from a clean
start, latency rows as JSON and as a text table, the spec's budgets, rung counts, and the
command line's output (a text table, or one JSON object on the last line of stdout).

Everything here runs after (or before) the measured stretch, on the caller's thread.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tailguard.decision import STAGES

if TYPE_CHECKING:
    from tailguard.service import Service
    from tailguard.spec import Budgets

__all__ = [
    "LATENCY_KEYS",
    "budgets_us",
    "emit_report",
    "latency_us",
    "report_log",
    "rung_counts",
    "start_measuring",
    "table_header",
    "table_row",
]

#: the per-stage figures a report keeps, microseconds
LATENCY_KEYS = ("p50_us", "p99_us", "p999_us", "max_us")


def start_measuring(service: Service) -> None:
    """Drain the side path and zero the latency histograms and engine counters, so that what
    follows (the served stretch) is all the report describes."""
    service.engine.run_side_path()
    if service.latency is not None:
        service.latency.reset()
    service.engine.reset_statistics()


def latency_us(snapshot: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """``{stage: {p50_us, p99_us, p999_us, max_us}}`` of a latency snapshot, to 0.1 µs."""
    return {s: {k: round(snapshot[s][k], 1) for k in LATENCY_KEYS} for s in snapshot}


def budgets_us(budgets: Budgets) -> dict[str, float]:
    """The spec's per-stage budgets in µs (to 0.1), in ``STAGES`` order."""
    return {s: round(getattr(budgets, s) * 1e6, 1) for s in STAGES}


def rung_counts(names: Sequence[str], counts: np.ndarray) -> dict[str, int]:
    """``{rung name: answers}`` from per-rung counts in ladder order."""
    return {n: int(c) for n, c in zip(names, counts.tolist(), strict=True)}


def table_header(note: str) -> str:
    """The header line of a latency table (stage, p50, p99, p99.9, max, budget), then ``note``."""
    return f"{'stage':<12}{'p50':>9}{'p99':>9}{'p99.9':>9}{'max':>10}{'budget':>9}  {note}"


def table_row(label: str, row: Mapping[str, float], budget_us: float | None = None) -> str:
    """One line of a latency table: ``label`` then the row's p50, p99, p99.9 and max (µs,
    ``max`` left out when the row has none) and the budget when given."""
    line = f"{label:<12}{row['p50_us']:>9.1f}{row['p99_us']:>9.1f}{row['p999_us']:>9.1f}"
    if "max_us" in row:
        line += f"{row['max_us']:>10.1f}"
    return line + (f"{budget_us:>9.0f}" if budget_us is not None else "")


def report_log(as_json: bool) -> Callable[..., None]:
    """Where progress lines go: stderr when stdout is kept for the JSON report, else stdout."""
    if as_json:
        return lambda *a: print(*a, file=sys.stderr)
    return print


def emit_report(report: Mapping[str, Any], as_json: bool, text: Callable[[Any], str]) -> None:
    """Print ``report`` as one JSON object (the last line of stdout) or as ``text(report)``."""
    print(json.dumps(report) if as_json else text(report))
