"""Turn a demo run into figures: a text table, a JSON document and a PNG latency plot.

Stage rows come from the engine's HDR histograms (service time per stage, server side).
The *response* row is measured by the load generator from each decision's intended send
time to the reply, so it includes any time the loop fell behind schedule (no coordinated
omission).  Model quality is the AUC of the decisions' ``p_up`` against the realised 2 s
direction of the mid, overall and per rung.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.decision import Flag
from tailguard.demo.trading import DemoResult
from tailguard.observe.quality import auc

__all__ = ["format_table", "summarize", "write_report"]

PCTS = (50.0, 99.0, 99.9, 99.99)


def _pcts_us(values_ns: np.ndarray) -> dict[str, float]:
    if len(values_ns) == 0:
        return {"p50_us": 0.0, "p99_us": 0.0, "p999_us": 0.0, "p9999_us": 0.0, "max_us": 0.0}
    p = np.percentile(values_ns, PCTS) / 1e3
    return {
        "p50_us": round(float(p[0]), 2),
        "p99_us": round(float(p[1]), 2),
        "p999_us": round(float(p[2]), 2),
        "p9999_us": round(float(p[3]), 2),
        "max_us": round(float(values_ns.max()) / 1e3, 2),
    }


def summarize(r: DemoResult) -> dict[str, Any]:
    """The demo's figures as one JSON-ready dict."""
    svc = r.service
    spec = svc.spec
    budgets = spec.budgets
    budget_us = {s: round(getattr(budgets, s) * 1e6, 1) for s in ("ingest", "features", "inference",
                                                                   "delivery", "total")}
    snap = svc.latency_snapshot().get("predict", {})
    stages = {
        name: {**{k: round(v, 2) for k, v in row.items() if k != "count"},
               "count": int(row["count"]), "budget_us": budget_us.get(name)}
        for name, row in snap.items()
    }
    response = r.end_ns - r.intended_ns
    prio_budget_ns = int(spec.priority("critical").budget * 1e9) if any(
        p.name == "critical" for p in spec.priorities) else None
    names = svc.engine.rung_names
    counts = np.bincount(r.rung, minlength=len(names))
    stats = svc.engine.statistics()
    labelled = r.label >= 0
    quality = {"auc": round(auc(r.label[labelled], r.p_up[labelled]), 4),
               "labelled_decisions": int(labelled.sum())}
    for i, name in enumerate(names):
        sel = labelled & (r.rung == i)
        if sel.sum() >= 50:
            quality[f"auc_{name}"] = round(auc(r.label[sel], r.p_up[sel]), 4)
    missed = int(np.count_nonzero(r.flags & int(Flag.DEADLINE_MISSED)))
    return {
        "service": spec.name,
        "seconds": r.seconds,
        "wall_s": round(r.wall_s, 2),
        "target_rate_hz": r.rate_hz,
        "achieved_rate_hz": round(len(r.intended_ns) / max(r.wall_s, 1e-9), 1),
        "decisions": len(r.intended_ns),
        "ticks_applied": r.ticks_applied,
        "models": {n: {"version": m.version, "runtime": m.runtime.kind,
                       "content_hash": m.manifest.content_hash[:16]}
                   for n, m in svc.models.items()},
        "feature_versions": svc.feature_versions,
        "stages": stages,
        "response_from_intended": _pcts_us(response),
        "service_time_client": _pcts_us(r.end_ns - r.start_ns),
        "ladder": {n: {"answered": int(counts[i]),
                       "skipped_budget": stats["rungs"][n]["skipped_budget"],
                       "failed": stats["rungs"][n]["failed"]} for i, n in enumerate(names)},
        "budget_misses": {
            "deadline_missed": missed,
            "deadline_missed_pct": round(100.0 * missed / max(len(r.flags), 1), 4),
            "response_over_budget": int(np.count_nonzero(response > prio_budget_ns))
            if prio_budget_ns else None,
            "budget_us": prio_budget_ns / 1e3 if prio_budget_ns else None,
        },
        "unknown_entities": int(np.count_nonzero(r.flags & int(Flag.UNKNOWN_ENTITY))),
        "stale_features": int(np.count_nonzero(r.flags & int(Flag.STALE_FEATURE))),
        "chaos_window_s": list(r.chaos_window_s) if r.chaos_window_s else None,
        "quality": quality,
        "training": r.train_metrics,
        "side_path_dropped": svc.latency.dropped if svc.latency is not None else 0,
    }


def format_table(s: dict[str, Any]) -> str:
    """The summary as the text table the demo prints."""
    lines = []
    head = f"{'stage':<26}{'p50':>9}{'p99':>9}{'p99.9':>9}{'p99.99':>9}{'max':>10}{'budget':>9}  p99 ok"
    lines.append(head + "   (µs)")
    lines.append("-" * len(head))
    for name, row in s["stages"].items():
        b = row.get("budget_us")
        ok = "" if b is None else ("yes" if row["p99_us"] <= b else "NO")
        lines.append(f"{name:<26}{row['p50_us']:>9.1f}{row['p99_us']:>9.1f}{row['p999_us']:>9.1f}"
                     f"{row['p9999_us']:>9.1f}{row['max_us']:>10.1f}{(b or 0):>9.0f}  {ok:>6}")
    for label, key in (("client service time", "service_time_client"),
                       ("response (from intended)", "response_from_intended")):
        row = s[key]
        lines.append(f"{label:<26}{row['p50_us']:>9.1f}{row['p99_us']:>9.1f}{row['p999_us']:>9.1f}"
                     f"{row['p9999_us']:>9.1f}{row['max_us']:>10.1f}")
    lines.append("")
    lad = "  ".join(f"{n}={v['answered']}" for n, v in s["ladder"].items())
    skipped = "  ".join(f"{n}={v['skipped_budget']}" for n, v in s["ladder"].items() if v["skipped_budget"])
    lines.append(f"ladder answered: {lad}")
    if skipped:
        lines.append(f"ladder skipped (budget): {skipped}")
    bm = s["budget_misses"]
    lines.append(f"budget misses: {bm['deadline_missed']} decisions past their deadline "
                 f"({bm['deadline_missed_pct']:.3f}%), {bm['response_over_budget']} responses over "
                 f"{bm['budget_us']:.0f}µs from intended send")
    lines.append(f"decisions: {s['decisions']} at {s['achieved_rate_hz']:.0f}/s "
                 f"(target {s['target_rate_hz']:.0f}/s), ticks applied: {s['ticks_applied']}, "
                 f"unknown entities: {s['unknown_entities']}, stale: {s['stale_features']}")
    q = s["quality"]
    per_rung = "  ".join(f"{k[4:]}={v:.3f}" for k, v in q.items() if k.startswith("auc_"))
    lines.append(f"model quality: AUC {q['auc']:.3f} on {q['labelled_decisions']} labelled decisions"
                 + (f"  ({per_rung})" if per_rung else ""))
    if s["chaos_window_s"]:
        a, b = s["chaos_window_s"]
        lines.append(f"chaos: primary slowed by 400µs per call from t={a:.1f}s to t={b:.1f}s")
    return "\n".join(lines)


def _plot(r: DemoResult, s: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    t = r.intended_ns / 1e9
    resp = (r.end_ns - r.intended_ns) / 1e3
    names = r.service.engine.rung_names
    for i, name in enumerate(names):
        sel = r.rung == i
        if sel.any():
            ax1.scatter(t[sel], resp[sel], s=2, label=f"{name} ({int(sel.sum())})", alpha=0.6)
    if s["budget_misses"]["budget_us"]:
        ax1.axhline(s["budget_misses"]["budget_us"], color="red", lw=1, ls="--", label="budget")
    if r.chaos_window_s:
        ax1.axvspan(*r.chaos_window_s, color="orange", alpha=0.15, label="primary slowed")
    ax1.set_yscale("log")
    ax1.set_xlabel("time (s)")
    ax1.set_ylabel("response from intended send (µs)")
    ax1.set_title("every decision, by ladder rung")
    ax1.legend(markerscale=4, fontsize=8)
    qs = 1.0 - np.logspace(0, -4.5, 200)
    for label, vals in (("response (from intended)", r.end_ns - r.intended_ns),
                        ("service time", r.end_ns - r.start_ns)):
        ax2.plot(1.0 / (1.0 - qs), np.quantile(vals, qs) / 1e3, label=label)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xticks([2, 10, 100, 1000, 10000], ["p50", "p90", "p99", "p99.9", "p99.99"])
    ax2.set_ylabel("latency (µs)")
    ax2.set_title("latency by percentile")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    fig.suptitle(f"tailguard demo: {s['service']}, {s['decisions']} decisions at "
                 f"{s['achieved_rate_hz']:.0f}/s, AUC {s['quality']['auc']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(r: DemoResult, out_root: Path) -> tuple[Path, dict[str, Any]]:
    """Write ``summary.json``, ``report.txt`` and ``latency.png`` under a new timestamped
    directory of ``out_root``; returns the directory and the summary."""
    s = summarize(r)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = out_root / stamp
    k = 1
    while out.exists():
        out = out_root / f"{stamp}-{k}"
        k += 1
    out.mkdir(parents=True)
    (out / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
    (out / "report.txt").write_text(format_table(s) + "\n")
    s["plot"] = str(out / "latency.png") if _plot(r, s, out / "latency.png") else None
    return out, s
