"""The reliability report: ``report.json`` (every figure) and ``report.md`` (the tables).

``write_report(results, out_dir)`` writes both into ``out_dir`` (by default
``runs/stress/<UTC timestamp>/``); ``summary(results)`` is the one JSON object the command
prints last with ``--json``: per scenario the issue's keys (``lost``, ``late``,
``p99_ms_before``/``during``/``after``, ``p999_ms_*``, ``recovery_s``), the scenario counts
named in ``FAULT_KEYS`` where it has them (``worker-crash``: ``worker_restarts`` and the
supervisor's restart latency), ``passed`` and the failed checks.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

__all__ = ["default_out_dir", "markdown", "summary", "write_report"]

KEYS = ("lost", "late", "sent", "shed", "degraded", "p99_ms_before", "p99_ms_during", "p99_ms_after",
        "p999_ms_before", "p999_ms_during", "p999_ms_after", "recovery_s")
#: Scenario counts (``fault``) that ``summary`` carries too, when a scenario reports them.
FAULT_KEYS = ("worker_restarts", "restart_s_median", "restart_s_max")
_TABLE = ("sent", "lost", "shed", "late", "p99_ms_before", "p99_ms_during", "p99_ms_after", "p999_ms_before",
          "p999_ms_during", "p999_ms_after", "recovery_s")
_WINDOW = ("sent", "lost", "shed", "late", "degraded", "retried", "p50_ms", "p99_ms", "p999_ms", "max_ms",
           "server_p99_ms")


def default_out_dir(root: Path | None = None) -> Path:
    """``runs/stress/<UTC timestamp>`` under ``root`` (default: the working directory)."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return (root or Path.cwd()) / "runs" / "stress" / stamp


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """``{scenario: {lost, late, p99_ms_before, ..., recovery_s, [FAULT_KEYS], passed, failed}}``."""
    out: dict[str, Any] = {}
    for r in results:
        if "error" in r:
            out[r["scenario"]] = {"error": r["error"], "passed": False}
            continue
        extra = {k: r["fault"][k] for k in FAULT_KEYS if k in r.get("fault", {})}
        out[r["scenario"]] = {**{k: r.get(k) for k in KEYS}, **extra, "passed": r["passed"],
                              "failed": sorted(k for k, v in r["checks"].items() if not v)}
    return out


def _f(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.2f}" if v < 100 else f"{v:.0f}"
    return str(v)


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The report as Markdown: the summary table, then per scenario its windows and checks."""
    command = meta.get("command", "tailguard stress")
    lines = ["# Reliability report", "", f"`{command}` — {meta.get('when', '')}",
             "", f"Machine: {meta.get('machine', '')}.  Latencies in ms from each request's intended send "
             "time, through the real client (retries, failover); definitions in docs/stress.md.", "",
             "| scenario | sent | lost | shed | late | p99 before | p99 during | p99 after | p99.9 before | "
             "p99.9 during | p99.9 after | recovery s | checks |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['scenario']} | error: {r['error']} |||||||||||")
            continue
        failed = [k for k, v in r["checks"].items() if not v]
        verdict = "pass" if not failed else "FAIL: " + ", ".join(failed)
        lines.append("| " + " | ".join([r["scenario"], *(_f(r.get(k)) for k in _TABLE), verdict]) + " |")
    for r in results:
        if "error" in r:
            continue
        f = r["fault"]
        lines += ["", f"## {r['scenario']}", "", r["description"] + ".", "",
                  f"Fault from {f['start_s']} s to {f['end_s']} s of the run.", "",
                  "| window | sent | lost | shed | late | degraded | retried | p50 | p99 | p99.9 | max | "
                  "server p99 | critical p99 (budget) | RSS MB | fds |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for w in ("before", "during", "after"):
            x = r["windows"][w]
            crit = x["classes"].get("critical")
            c = f"{_f(crit['p99_ms'])} ({_f(crit['budget_ms'])})" if crit else "—"
            res = r["resources"][w]
            cells = [w, *(_f(x[k]) for k in _WINDOW), c, _f(res["rss_mb_max"]), _f(res["fds_max"])]
            lines.append("| " + " | ".join(cells) + " |")
        errors = {w: r["windows"][w]["errors"] for w in ("before", "during", "after")
                  if r["windows"][w]["errors"]}
        details = {k: v for k, v in f.items() if k not in ("start_s", "end_s")}
        if errors:
            lines += ["", f"Final errors: `{json.dumps(errors)}`"]
        if details:
            lines += ["", f"Scenario counts: `{json.dumps(details)}`"]
        verdicts = ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in r["checks"].items())
        lines += ["", "Checks: " + verdicts]
    return "\n".join(lines) + "\n"


def write_report(results: list[dict[str, Any]], out_dir: Path, meta: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``out_dir``; their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "report.json"
    md = out_dir / "report.md"
    js.write_text(json.dumps({"meta": meta, "summary": summary(results), "scenarios": results}, indent=2))
    md.write_text(markdown(results, meta))
    return md, js
