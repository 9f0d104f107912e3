"""Timing reply-path hooks one at a time on real decisions (``tap_hook.py``, ``ring_hook.py``).

The trading example decides one request every ``gap_us`` (a busy wait between them, as an
open-loop server idles between requests); right after each decision one hook of ``variants``
runs on it, in rotation, timed alone.  ``release`` runs every 256 decisions (what the side path
does for the hooks' readers).  The first 200 decisions are a warm-up."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import tailguard


def time_hooks(engine: Any, quotes: dict[str, dict[str, float]], variants: dict[str, Callable[[Any], None]],
               release: Callable[[], None], calls: int, gap_us: float) -> dict[str, dict[str, float]]:
    """p50/p90/p99 µs of each hook in ``variants`` (see the module docstring)."""
    names = list(variants)
    ns = {k: np.zeros(calls // len(names) + 1, dtype=np.int64) for k in names}
    counts = dict.fromkeys(names, 0)
    requests = [(s, dict(quotes[s])) for s in sorted(quotes)]
    pc = time.perf_counter_ns
    gap = round(gap_us * 1e3)
    tailguard.tune_gc()
    for i in range(calls + 200):
        key, ctx = requests[i % len(requests)]
        d = engine.predict(key, ctx, priority="critical")
        name = names[i % len(names)]
        t0 = pc()
        variants[name](d)
        t1 = pc()
        if i >= 200:  # warm-up
            ns[name][counts[name]] = t1 - t0
            counts[name] += 1
        if i % 256 == 255:
            release()
        t = pc()
        while pc() - t < gap:
            pass
    out = {}
    for k in names:
        p50, p90, p99 = np.percentile(ns[k][: counts[k]] / 1e3, [50, 90, 99])
        out[k] = {"p50": round(float(p50), 3), "p90": round(float(p90), 3), "p99": round(float(p99), 3)}
    return out


def hook_parser(description: str) -> argparse.ArgumentParser:
    """The options both hook benchmarks take."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--calls", type=int, default=30_000)
    ap.add_argument("--gap-us", type=float, default=300.0, help="idle time between decisions")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="table to stderr, one JSON object on stdout")
    return ap


def trading_service(seed: int) -> tuple[Any, Any]:
    """The trading example loaded (models trained first if missing) with its store filled by
    5,000 generated ticks: ``(service, feed)``."""
    from inproc import Feed  # the generated tick feed (benchmarks/inproc.py)

    from support.example import SERVICE_DIR, ensure_models

    ensure_models()
    svc = tailguard.load_service(SERVICE_DIR, record_latency=False)
    feed = Feed(seed)
    feed.apply([svc], 5000)
    return svc, feed
