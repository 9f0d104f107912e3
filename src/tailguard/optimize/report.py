"""The verdict on each candidate and how it is shown: a table and a JSON object.

A candidate is *refused* when its accuracy loss against the baseline (``measure.loss``)
exceeds the declared ``max_loss``, when its loss cannot be computed, or when any output is not
finite; refused candidates stay in the table, with the reason, and are never written.  The
*best* candidate is the accepted one with the lowest batch-1 p99 that beats the baseline's
(ties broken by the batch-64 p99); there may be none.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any

from tailguard.optimize.candidates import Candidate
from tailguard.optimize.measure import Accuracy, Latency

__all__ = ["Report", "Row", "Status", "verdict"]


class Status(enum.Enum):
    """What became of a candidate."""

    BASELINE = "baseline"
    ACCEPTED = "ok"
    REFUSED = "refused"
    SKIPPED = "skipped"


@dataclass
class Row:
    """One candidate's measurements and verdict (``reason`` says why refused or skipped)."""

    candidate: Candidate
    status: Status
    reason: str = ""
    accuracy: Accuracy | None = None
    loss: float | None = None
    latency: Latency | None = None

    @property
    def name(self) -> str:
        """The candidate's name."""
        return self.candidate.name

    def p99(self, batch: int) -> float:
        """p99 latency (µs) at ``batch``; infinity when not measured."""
        return self.latency.p99_us.get(batch, math.inf) if self.latency else math.inf


def verdict(acc: Accuracy, loss: float, max_loss: float) -> tuple[Status, str]:
    """ACCEPTED, or REFUSED with the reason, for a candidate's accuracy and loss."""
    if not acc.finite:
        return Status.REFUSED, "non-finite outputs"
    if math.isnan(loss):
        return Status.REFUSED, f"{acc.metric} is undefined on these rows"
    if loss > max_loss:
        what = "AUC drop" if acc.metric == "auc" else "relative MSE increase"
        return Status.REFUSED, f"{what} {loss:.4g} > max-loss {max_loss:g}"
    return Status.ACCEPTED, ""


def _us(d: dict[int, float] | None, batch: int) -> str:
    return f"{d[batch]:.1f}" if d is not None and batch in d and math.isfinite(d[batch]) else "-"


def _num(v: float | None, digits: int = 6) -> float | None:
    return None if v is None or not math.isfinite(v) else round(v, digits)


@dataclass
class Report:
    """A whole run: the version optimised, the validation rows, every row, what was written."""

    model: str
    version: str
    content_hash: str
    metric: str
    max_loss: float
    validation: dict[str, Any]
    rows: list[Row]
    written: dict[str, str] = field(default_factory=dict)
    #: Why ``--write`` wrote nothing (empty: not asked, or written).
    write_error: str = ""

    def row(self, name: str) -> Row | None:
        """The row of candidate ``name``, or None."""
        return next((r for r in self.rows if r.name == name), None)

    def best(self) -> Row | None:
        """The accepted candidate with the lowest batch-1 p99 below the baseline's, or None."""
        base = next((r for r in self.rows if r.status is Status.BASELINE), None)
        limit = base.p99(1) if base else math.inf
        ok = [r for r in self.rows if r.status is Status.ACCEPTED and r.p99(1) < limit]
        return min(ok, key=lambda r: (r.p99(1), r.p99(64)), default=None)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready builtins (non-finite numbers as null)."""
        best = self.best()
        return {
            "model": self.model, "version": self.version, "content_hash": self.content_hash,
            "metric": self.metric, "max_loss": self.max_loss, "validation": self.validation,
            "candidates": [{
                "name": r.name, "status": r.status.value, "reason": r.reason,
                "description": r.candidate.description,
                self.metric: _num(r.accuracy.value) if r.accuracy else None,
                "logloss": _num(r.accuracy.logloss) if r.accuracy else None,
                "loss": _num(r.loss),
                "max_abs_diff": _num(r.accuracy.max_abs_diff, 9) if r.accuracy else None,
                "latency_us": {str(b): {"p50": _num(r.latency.p50_us[b], 3),
                                        "p99": _num(r.latency.p99_us[b], 3)}
                               for b in r.latency.p50_us} if r.latency else {},
            } for r in self.rows],
            "best": best.name if best else None,
            "written": self.written or None,
            "write_error": self.write_error or None,
        }

    def table(self) -> str:
        """The side-by-side table printed by ``tailguard optimize``."""
        m = self.metric.upper()
        head = ("candidate", "status", m, "loss", "max|diff|", "b1 p50", "b1 p99", "b64 p50", "b64 p99", "")
        lines: list[tuple[str, ...]] = [head]
        for r in self.rows:
            a, lat = r.accuracy, r.latency
            times = [_us(lat.p50_us if lat else None, 1), _us(lat.p99_us if lat else None, 1),
                     _us(lat.p50_us if lat else None, 64), _us(lat.p99_us if lat else None, 64)]
            lines.append((
                r.name, r.status.value,
                f"{a.value:.4f}" if a and math.isfinite(a.value) else "-",
                f"{r.loss:+.4f}" if r.loss is not None and math.isfinite(r.loss) else "-",
                f"{a.max_abs_diff:.1e}" if a and math.isfinite(a.max_abs_diff) else "-",
                *times, r.reason or r.candidate.description,
            ))
        widths = [max(len(row[i]) for row in lines) for i in range(len(head) - 1)]
        out = [f"{self.model}/{self.version} ({self.content_hash[:12]}): {self.validation['eval_rows']} "
               f"evaluation rows of {self.validation['uri']}; max-loss {self.max_loss:g} "
               f"({'absolute AUC drop' if self.metric == 'auc' else 'relative MSE increase'})"]
        for i, row in enumerate(lines):
            pairs = enumerate(zip(row, widths, strict=False))
            cells = [c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in pairs]
            out.append(("  ".join(cells) + "  " + row[-1]).rstrip())
            if i == 0:
                out.append("-" * (sum(widths) + 2 * len(widths) + 4))
        out.append("latency: µs per call, best of interleaved blocks; "
                   "loss: against the baseline on the same rows")
        best = self.best()
        out.append(f"best: {best.name}" if best
                   else "best: none (no accepted candidate beats the baseline's b1 p99)")
        return "\n".join(out)
