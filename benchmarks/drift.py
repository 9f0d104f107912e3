"""Drift detection on synthetic streams with known change points: detection delay, false
alarms, and what it costs per observation.

What it measures.  A stream stands for a model's predictions, in units of the training
reference (mean 0, sd 1).  Change streams are ``PRE`` stationary observations, then ``POST``
after a change: a mean shift (+0.5 sd, +1 sd, -1 sd) or a variance shift (sd x2, mean
unchanged); ``STREAMS`` seeds each.  No-change streams are stationary throughout
(``STATIONARY`` observations in all).  Everything runs the production code:

* ``adwin`` and ``page_hinkley``: ``tailguard.observe.detectors.StreamDetector`` (river's
  detectors, standardised by the reference), fed one observation at a time, so the delay is
  exact: observations after the change point until the first detection at or after it;
* ``monitor``: ``tailguard.observe.drift.DriftMonitor`` with the ``[drift]`` defaults
  (windows of 1000, PSI and KS against a reference built from another stationary sample,
  hysteresis: 2 windows in a row to alert, ADWIN on the prediction), rows queued with
  ``record`` and the side path drained every ``DRAIN_EVERY`` rows, as a serving loop would;
  its detection is the first alert event of any signal reaching the sink, so its delay has
  that resolution.  A feature column of independent stationary noise rides along (it must
  not alert).

Reported per method and change kind: median and p90 delay, and streams where nothing was
detected within ``POST`` observations (missed, left out of the percentiles); per method the
false alarms per 100k observations on the no-change streams (a detection, or an alert event,
is one alarm).  Cost per observation, in blocks of ``BLOCK`` values (p50/p99/p99.9 over
blocks, and each as a ratio to the baseline measured in the same run): a bare Python loop
standardising each value (the floor of any per-value Python detector), river's ADWIN
``update`` called directly (the baseline: the issue's "0.2 µs per observation"), the two
StreamDetectors, and the whole monitor (record + drain: window fill, detector, PSI/KS scoring
amortised over the window).  No server and no request load here: the monitor's reply-path
cost is part of ``benchmarks/observe.py``.

Headline: ``detection_delay_median`` and ``detection_delay_p90`` are the monitor's (first alert
of any signal) over every change stream; ``false_alarms_per_100k`` the monitor's on the
no-change streams.  Takes ~10-20 s.

Run: ``.venv/bin/python benchmarks/drift.py`` (tables) or ``--json`` (tables on stderr, the
last stdout line one JSON object).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from importlib.metadata import version
from typing import Any

import numpy as np

from tailguard.observe.alerts import AlertEvent
from tailguard.observe.detectors import DetectorKind, StreamDetector, make_detector
from tailguard.observe.drift import DriftMonitor
from tailguard.observe.reference import Reference
from tailguard.spec import DriftSpec

PRE = 5000
POST = 5000
STREAMS = 100
STATIONARY = 2_000_000
STATIONARY_MONITOR = 3_000_000
DRAIN_EVERY = 100
BLOCK = 1000
COST_BLOCKS = 300
CHANGES: dict[str, tuple[float, float]] = {  # kind -> (mean shift in sd, sd factor)
    "mean+0.5sd": (0.5, 1.0),
    "mean+1sd": (1.0, 1.0),
    "mean-1sd": (-1.0, 1.0),
    "variance_x2": (0.0, 2.0),
}
DETECTORS = (DetectorKind.ADWIN, DetectorKind.PAGE_HINKLEY)


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def change_stream(kind: str, seed: int) -> np.ndarray:
    shift, scale = CHANGES[kind]
    x = np.random.default_rng(seed).normal(size=PRE + POST)
    x[PRE:] = x[PRE:] * scale + shift
    return x


class Alarms:
    """An alert sink that notes which rows had been queued when each alert arrived."""

    def __init__(self) -> None:
        self.rows_seen = 0
        self.at: list[int] = []

    def send(self, event: AlertEvent) -> None:
        if event.state == "alert":
            self.at.append(self.rows_seen)

    def close(self) -> None:
        return None

    def statistics(self) -> dict[str, Any]:
        return {"sent": len(self.at), "failed": 0, "dropped": 0}


def reference() -> Reference:
    rng = np.random.default_rng(10_000)
    data = rng.normal(size=(50_000, 2)).astype(np.float32)
    return Reference.build(data, ("noise.x", "prediction.y"), 1)


def run_monitor(ref: Reference, values: np.ndarray, seed: int) -> tuple[list[int], float]:
    """Alert positions (rows queued when each alert reached the sink) and seconds spent."""
    sink = Alarms()
    m = DriftMonitor(ref, DriftSpec(window_interval=None), sinks=[sink])
    noise = np.random.default_rng(seed + 777).normal(size=len(values)).astype(np.float32)
    rows = np.column_stack([noise, values.astype(np.float32)])
    t0 = time.perf_counter()
    for a in range(0, len(rows), DRAIN_EVERY):
        chunk = rows[a:a + DRAIN_EVERY]
        m.record(chunk[:, :1], chunk[:, 1:])
        sink.rows_seen = a + len(chunk)
        m.drain(None)
    return sink.at, time.perf_counter() - t0


def first_detection(kind: DetectorKind, values: np.ndarray, start: int) -> int | None:
    """Observations after ``start`` until the first detection at or after it (exact)."""
    det = StreamDetector(kind, "prediction")
    for i, v in enumerate(values.tolist()):
        if det.update_many((v,)) and i >= start:
            return i - start
    return None


def summarise(delays: list[int | None]) -> dict[str, Any]:
    found = [d for d in delays if d is not None]
    return {
        "median": float(np.median(found)) if found else None,
        "p90": float(np.percentile(found, 90)) if found else None,
        "missed": len(delays) - len(found),
        "streams": len(delays),
    }


def detection(ref: Reference) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    all_monitor: list[int | None] = []
    for kind in CHANGES:
        per: dict[str, list[int | None]] = {"monitor": [], **{k.value: [] for k in DETECTORS}}
        for s in range(STREAMS):
            x = change_stream(kind, s)
            at, _ = run_monitor(ref, x, s)
            after = [a - PRE for a in at if a > PRE]
            per["monitor"].append(after[0] if after else None)
            for k in DETECTORS:
                per[k.value].append(first_detection(k, x, PRE))
        all_monitor += per["monitor"]
        out[kind] = {name: summarise(d) for name, d in per.items()}
    out["all"] = {"monitor": summarise(all_monitor)}
    return out


def false_alarms(ref: Reference) -> dict[str, float]:
    rng = np.random.default_rng(20_000)
    x = rng.normal(size=STATIONARY)
    out: dict[str, float] = {}
    for k in DETECTORS:
        det = StreamDetector(k, "prediction")
        out[k.value] = det.update_many(x.tolist()) / STATIONARY * 1e5
    alarms = 0
    per = STATIONARY_MONITOR // 10
    for s in range(10):
        at, _ = run_monitor(ref, np.random.default_rng(30_000 + s).normal(size=per), 40_000 + s)
        alarms += len(at)
    out["monitor"] = alarms / STATIONARY_MONITOR * 1e5
    return out


def cost(ref: Reference) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(5)
    blocks = [rng.normal(size=BLOCK).tolist() for _ in range(COST_BLOCKS)]
    arrays = [np.asarray(b) for b in blocks]

    def bare(values: list[float]) -> None:
        c, s = 0.0, 1.0
        acc = 0.0
        for v in values:
            acc += (v - c) / s

    river = make_detector(DetectorKind.ADWIN)

    def river_adwin(values: list[float]) -> None:
        update = river.update
        for v in values:
            update(v)

    dets = {k.value: StreamDetector(k, "prediction") for k in DETECTORS}
    sink = Alarms()
    mon = DriftMonitor(ref, DriftSpec(window_interval=None), sinks=[sink])
    noise = np.zeros((BLOCK, 1), np.float32)

    def monitor(i: int) -> None:
        v = arrays[i].astype(np.float32).reshape(-1, 1)
        for a in range(0, BLOCK, DRAIN_EVERY):
            mon.record(noise[a:a + DRAIN_EVERY], v[a:a + DRAIN_EVERY])
            mon.drain(None)

    runs: dict[str, Any] = {
        "bare_loop": lambda i: bare(blocks[i]),
        "river_adwin_update": lambda i: river_adwin(blocks[i]),
        **{f"tailguard_{name}": (lambda i, d=d: d.update_many(blocks[i])) for name, d in dets.items()},
        "tailguard_monitor": monitor,
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(COST_BLOCKS):  # interleaved: machine noise falls on every method alike
        for name, fn in runs.items():
            t0 = time.perf_counter_ns()
            fn(i)
            times[name].append((time.perf_counter_ns() - t0) / BLOCK / 1e3)
    base = {q: float(np.percentile(times["river_adwin_update"], q)) for q in (50, 99, 99.9)}
    out: dict[str, dict[str, float]] = {}
    for name, t in times.items():
        row: dict[str, float] = {}
        for q, label in ((50, "p50"), (99, "p99"), (99.9, "p99.9")):
            v = float(np.percentile(t, q))
            row[f"{label}_us"] = round(v, 4)
            row[f"{label}_ratio"] = round(v / base[q], 3)
        out[name] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    args = ap.parse_args()
    t0 = time.perf_counter()
    ref = reference()
    log("detection delay (observations after the change point; monitor: first alert, drained every "
        f"{DRAIN_EVERY} rows)")
    det = detection(ref)
    log(f"{'change':14s} {'method':14s} {'median':>8s} {'p90':>8s} {'missed':>7s}")
    for kind, methods in det.items():
        for name, s in methods.items():
            med = "-" if s["median"] is None else f"{s['median']:.0f}"
            p90 = "-" if s["p90"] is None else f"{s['p90']:.0f}"
            log(f"{kind:14s} {name:14s} {med:>8s} {p90:>8s} {s['missed']:>4d}/{s['streams']}")
    fa = false_alarms(ref)
    log("false alarms per 100k observations on no-change streams: "
        + ", ".join(f"{k} {v:.2f}" for k, v in fa.items()))
    c = cost(ref)
    log(f"cost per observation (blocks of {BLOCK}; ratio to river's ADWIN update)")
    log(f"{'method':22s} {'p50 us':>8s} {'p99 us':>8s} {'p99.9 us':>9s} {'p50 x':>7s} {'p99 x':>7s}")
    for name, r in c.items():
        log(f"{name:22s} {r['p50_us']:8.3f} {r['p99_us']:8.3f} {r['p99.9_us']:9.3f} "
            f"{r['p50_ratio']:7.2f} {r['p99_ratio']:7.2f}")
    wall = time.perf_counter() - t0
    log(f"done in {wall:.1f}s")
    headline = det["all"]["monitor"]
    result = {
        "benchmark": "drift",
        "detection_delay_median": headline["median"],
        "detection_delay_p90": headline["p90"],
        "missed_changes": headline["missed"],
        "false_alarms_per_100k": round(fa["monitor"], 3),
        "false_alarms_per_100k_by_method": {k: round(v, 3) for k, v in fa.items()},
        "detection": det,
        "cost_per_observation": c,
        "config": {"pre": PRE, "post": POST, "streams_per_change": STREAMS, "drain_every": DRAIN_EVERY,
                   "stationary_detectors": STATIONARY, "stationary_monitor": STATIONARY_MONITOR,
                   "spec": "DriftSpec() defaults: window 1000, psi 0.25/0.1, ks 0.15/0.1, enter 2, adwin"},
        "env": {"python": platform.python_version(), "numpy": np.__version__, "river": version("river"),
                "machine": platform.machine()},
        "wall_s": round(wall, 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps({k: result[k] for k in ("detection_delay_median", "detection_delay_p90",
                                                  "false_alarms_per_100k")}))


if __name__ == "__main__":
    main()
