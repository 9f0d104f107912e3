"""Which HTTP server machinery should ``tailguard serve`` build on?  Measured, not guessed.

Three candidates answer every ``POST`` with the same fixed JSON body (about the size of an OIP
infer response), each in its own process on uvloop (``benchmarks/peers/http_fixed.py``):

* ``httptools``: a bare ``asyncio.Protocol`` feeding httptools' C parser, one write per answer
  (the shape tailguard's HTTP server takes);
* ``uvicorn``: uvicorn (httptools parser, access log off) with a raw ASGI app: no framework, so
  the cost is uvicorn's ASGI machinery alone;
* ``aiohttp``: aiohttp's web server with one handler (skipped when aiohttp is not installed).

Every candidate gets the same requests (tailguard's OIP infer bodies for the trading service)
from tailguard's load generator: sequential latency in interleaved blocks (order rotated each
round), then the maximum open-loop rate with p99 <= 5 ms and >= 99 % answered (a doubling
ladder, then bisection; 32 keep-alive connections, one request in flight each).

Run: ``.venv/bin/python benchmarks/http_candidates.py`` (a table) or ``--json`` (the table goes
to stderr, the last stdout line is one JSON object); ``--quick`` for a short run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from peers.launch import PeerProcess  # noqa: E402

from tailguard.bench import loadgen  # noqa: E402
from tailguard.bench.compare import Series, interleaved_sequential, max_rate  # noqa: E402
from tailguard.bench.loadgen import Target, Workload  # noqa: E402
from tailguard.bench.mix import parse_mix  # noqa: E402

CANDIDATES = ("httptools", "uvicorn", "aiohttp")


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def workload() -> Workload:
    keys = [f"SYM{i:02d}" for i in range(16)]
    ctx = [{"bid": 100.0 + i, "ask": 100.02 + i, "bid_size": 300.0, "ask_size": 200.0} for i in range(16)]
    return Workload(parse_mix("normal"), keys, list(ctx), entity="instrument", model="trading")


def show_step(s: dict[str, Any]) -> None:
    log(f"  {s['rate']:>8.0f}/s p99 {s['p99_us'] or 0:>8.0f} us ok {s['ok_fraction']:.3f} "
        f"{'pass' if s['pass'] else 'FAIL'}")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    names = [c for c in CANDIDATES if c != "aiohttp" or importlib.util.find_spec("aiohttp") is not None]
    skipped = [c for c in CANDIDATES if c not in names]
    w = workload()
    out: dict[str, Any] = {"candidates": {}, "skipped": {c: "not installed" for c in skipped}}
    with ExitStack() as stack:
        procs = {n: stack.enter_context(PeerProcess.start("http_fixed.py", "--impl", n)) for n in names}
        rounds, block = (3, 500) if args.quick else (8, 1500)
        log(f"sequential: {rounds} interleaved rounds of {block} requests per candidate")
        series = {n: Series(Target("http", p.address), w) for n, p in procs.items()}
        recs = loadgen.run_loop(interleaved_sequential(series, {}, rounds=rounds, block=block,
                                                       warmup=200 if args.quick else 1000))
        for n in names:
            out["candidates"][n] = {"sequential_us": recs[n].report(1.0)["latency_us"]}
        step_s, warm_s = (1.0, 0.25) if args.quick else (2.0, 0.5)
        for n, p in procs.items():
            log(f"max rate: {n}")
            res = max_rate(Target("http", p.address), w, start=1000, ceiling=128_000,
                           bisect=2 if args.quick else 3, duration_s=step_s, warmup_s=warm_s,
                           connections=32, on_step=show_step)
            out["candidates"][n]["max_rps"] = res["max_rps"]
            out["candidates"][n]["steps"] = res["steps"]
    summary: dict[str, Any] = {}
    for n, c in out["candidates"].items():
        summary[f"{n}_p50_us"] = c["sequential_us"]["p50"]
        summary[f"{n}_p99_us"] = c["sequential_us"]["p99"]
        summary[f"{n}_max_rps"] = c["max_rps"]
    summary.update(out)
    summary["total_s"] = round(time.perf_counter() - t0, 1)
    summary["python"] = platform.python_version()
    summary["cpus"] = os.cpu_count()
    summary["quick"] = bool(args.quick)
    return summary


def report(s: dict[str, Any], stream: Any) -> None:
    print(f"HTTP server candidates (fixed JSON answer), python {s['python']}, {s['cpus']} cpus"
          f"{' (QUICK)' if s['quick'] else ''}", file=stream)
    print(f"  {'candidate':<11}{'p50 us':>9}{'p99 us':>9}{'p99.9 us':>10}{'max rate/s':>12}", file=stream)
    for n, c in s["candidates"].items():
        lat = c["sequential_us"]
        print(f"  {n:<11}{lat['p50']:>9.1f}{lat['p99']:>9.1f}{lat['p999']:>10.1f}{c['max_rps']:>12.0f}",
              file=stream)
    for n, why in s["skipped"].items():
        print(f"  {n:<11} skipped: {why}", file=stream)
    print(f"ran {s['total_s']} s", file=stream)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter phases: a smoke run")
    ap.add_argument("--json", action="store_true", help="table to stderr, one JSON object on stdout")
    args = ap.parse_args()
    s = measure(args)
    report(s, sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(s), flush=True)


if __name__ == "__main__":
    main()
