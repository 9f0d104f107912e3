"""The budget check's verdict: measured percentiles, every check, a table and a JSON object.

A ``Check`` is one comparison (a stage's p99 against its ``[budgets]`` value, the response
p99 against the class budget, the missed-deadline share against its tolerance, the AUC
against its floor); the report fails when any check does, and says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["BudgetReport", "Check"]

_ROWS = ("ingest", "features", "inference", "delivery", "total", "response")


@dataclass(frozen=True)
class Check:
    """One comparison: ``value`` against ``limit`` (``unit``), passed when ``ok``; ``upper``
    tells whether the limit is a ceiling (latency, misses) or a floor (accuracy)."""

    name: str
    value: float
    limit: float
    unit: str
    ok: bool
    upper: bool = True

    def describe(self) -> str:
        """One line: the check, the figure and the limit, e.g. ``inference p99 1500.0us > 1000.0us``."""
        rel = ("<=" if self.ok else ">") if self.upper else (">=" if self.ok else "<")
        return f"{self.name} {self.value:.4g}{self.unit} {rel} {self.limit:.4g}{self.unit}"

    def as_dict(self) -> dict[str, Any]:
        """The check as plain JSON values."""
        return {"name": self.name, "value": self.value, "limit": self.limit, "unit": self.unit,
                "ok": self.ok}


@dataclass
class BudgetReport:
    """What a budget check measured and decided.  ``stages`` maps stage name (and
    ``response``: from intended send time) to ``StageHistograms.summary`` rows in µs."""

    service: str
    priority: str
    class_budget_us: float
    batch: int
    rate_hz: float
    seconds: float
    decisions: int
    achieved_hz: float
    stages: dict[str, dict[str, float]]
    budgets_us: dict[str, float]
    missed: int
    exhausted: int
    max_missed: float
    answered: dict[str, int]
    skipped: dict[str, int]
    shift: dict[str, dict[str, float]] = field(default_factory=dict)
    accuracy: dict[str, Any] | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        """The checks that did not pass."""
        return [c for c in self.checks if not c.ok]

    @property
    def exit_code(self) -> int:
        """0 when every check passed, 1 otherwise."""
        return 1 if self.failed else 0

    def as_dict(self) -> dict[str, Any]:
        """The whole report as plain JSON values."""
        return {
            "ok": not self.failed,
            "service": self.service,
            "priority": self.priority,
            "class_budget_us": self.class_budget_us,
            "batch": self.batch,
            "rate_hz": self.rate_hz,
            "seconds": self.seconds,
            "decisions": self.decisions,
            "achieved_hz": self.achieved_hz,
            "stages": self.stages,
            "budgets_us": self.budgets_us,
            "missed": self.missed,
            "exhausted": self.exhausted,
            "max_missed": self.max_missed,
            "answered": self.answered,
            "skipped_budget": self.skipped,
            "shift": self.shift,
            "accuracy": self.accuracy,
            "checks": [c.as_dict() for c in self.checks],
            "failed": [c.name for c in self.failed],
        }

    def table(self) -> str:
        """The human-readable report (the per-stage table, then the verdict)."""
        unit = "request" if self.batch == 1 else f"batch of {self.batch}"
        lines = [
            f"check-budget {self.service}: {self.decisions} decisions ({unit}) at {self.achieved_hz:.0f}/s "
            f"(target {self.rate_hz:g}/s) for {self.seconds:g} s, priority {self.priority} "
            f"(budget {self.class_budget_us:g} µs)",
            "",
            f"{'stage':<26}{'p50':>9}{'p99':>9}{'p99.9':>9}{'max':>10}{'budget':>9}  p99 ok   (µs)",
            "-" * 88,
        ]
        for name in _ROWS:
            row = self.stages.get(name)
            if row is None:
                continue
            budget = self.budgets_us.get(name)
            label = "response (from intended)" if name == "response" else name
            ok = "" if budget is None else ("yes" if row["p99_us"] <= budget else "NO")
            b = "" if budget is None else f"{budget:g}"
            lines.append(f"{label:<26}{row['p50_us']:>9.1f}{row['p99_us']:>9.1f}{row['p999_us']:>9.1f}"
                         f"{row['max_us']:>10.1f}{b:>9}  {ok:>6}")
        lines.append("")
        lines.append("ladder answered: " + "  ".join(f"{k}={v}" for k, v in self.answered.items()))
        if any(self.skipped.values()):
            lines.append("ladder skipped (budget): " + "  ".join(
                f"{k}={v}" for k, v in self.skipped.items() if v))
        share = self.missed / self.decisions if self.decisions else 0.0
        lines.append(f"deadline missed: {self.missed} of {self.decisions} ({share:.3%}; tolerance "
                     f"{self.max_missed:.3%})" + (f", {self.exhausted} unanswered" if self.exhausted else ""))
        if self.shift:
            lines.append("shift: " + "  ".join(
                f"{k} " + ",".join(f"{n}={x:g}" for n, x in v.items()) for k, v in self.shift.items()))
        if self.accuracy is not None:
            a = self.accuracy
            floor = "" if a.get("floor") is None else f" (floor {a['floor']:g})"
            moved = f", shifted: {', '.join(a['shifted_columns'])}" if a.get("shifted_columns") else ""
            lines.append(f"accuracy: AUC {a['auc']:.4f} of {a['model']} on {a['rows']} labelled rows"
                         f"{moved}{floor}")
        lines.append("")
        if self.failed:
            lines.append(f"FAIL: {len(self.failed)} check(s) failed")
            lines.extend(f"  - {c.describe()}" for c in self.failed)
        else:
            lines.append(f"PASS: all {len(self.checks)} checks passed")
        return "\n".join(lines)
