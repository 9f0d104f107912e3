"""Engine overhead in process: ``Engine.predict`` against the raw runtime call on the same model.

What it measures.  The trading example service (``examples/trading``) is loaded the documented
serving way (``load_service`` then ``tailguard.tune_gc()``) and its online store is filled by
replaying generated ticks through ``svc.stream.apply``.  Then, in one process and on the same
model and inputs, it times every single call with ``time.perf_counter_ns``:

* ``raw``: the primary model's runtime, ``svc.models["alpha"].runtime.run(x)`` (the compiled
  trees), on preallocated float32 rows holding the feature values the engine would assemble;
* ``engine``: ``svc.engine.predict(symbol, quote, priority="critical")`` -- ingest, feature
  assembly (store rows + the quote transform), the ladder walk, the decision and its
  side-path hook;
* second baselines on the same ``model.onnx``: a plain ONNX Runtime ``InferenceSession.run``
  (one intra-op thread, as tailguard configures it) and tailguard's own ONNX backend with I/O
  binding (``OnnxRuntime.run``), plus ``engine_onnx``: the engine with the primary's runtime
  swapped for that ONNX backend;
* the same at batch 64 with ``svc.engine.predict_batch(64 symbols, quote arrays,
  priority="normal")``: the 300 us critical budget is tighter than the batch's own p99 here,
  so under "critical" the ladder would (rightly) skip the primary for a share of batches and
  the figure would mix rungs.

How.  Every series runs after a warm-up, in blocks (``--block`` calls at batch 1, the batch-64
block sized so both finish in the same number of rounds); each round runs one block of every
series, in an order rotated from round to round, so machine noise falls on all of them alike.
Off the measured calls, the service does its side-path work (``svc.run_side_path()``) after
every block, and a few more ticks are applied after every round, as a live feed would (this
also keeps the features inside their 30 s TTL).  Percentiles are over all measured calls, in
microseconds; the timer's own cost (two ``perf_counter_ns`` calls) is reported, not subtracted.
The engines' counters are reported too: a WARNING is printed when a lower ladder rung answered
more than 0.1 % of an engine's rows (its figures then mix rungs).

Run: ``.venv/bin/python benchmarks/inproc.py`` (a table), ``--json`` (the table goes to stderr,
the last stdout line is one JSON object).  Missing or outdated example models are trained first.
Targets are printed as PASS/FAIL lines; they never change the exit status.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import tailguard
from tailguard.models.onnx import OnnxRuntime

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support.example import SERVICE_DIR, ensure_models, example_module, log

BATCH = 64
N_INSTRUMENTS = 64  # distinct instruments: one per row of the batch
TICKS_SECONDS = 30.0  # of generated market data, fed as needed (cycled with shifted times)
TICKS_PER_ROUND = 16  # applied between rounds, like a live feed

TARGETS = (
    # (name, limit, description)
    ("overhead_p50_us", 15.0, "engine p50 - raw p50 <= 15 us"),
    ("p999_over_raw_p999", 1.25, "engine p99.9 / raw p99.9 <= 1.25"),
    ("batch64_over_batch1", 10.0, "engine batch-64 p50 / engine batch-1 p50 <= 10"),
)








# -- timing loops: one per call shape, identical structure, nothing but the call inside ----------
def loop_engine1(predict: Any, calls: list[tuple[str, dict[str, float]]], out: np.ndarray, pos: int) -> int:
    pc = time.perf_counter_ns
    odd = 0
    for key, ctx in calls:
        t0 = pc()
        d = predict(key, ctx, priority="critical")
        t1 = pc()
        out[pos] = t1 - t0
        pos += 1
        if d.flags or d.rung_index:
            odd += 1
    return odd


def loop_engine_batch(predict_batch: Any, keys: list[str], ctx: dict[str, np.ndarray], n: int,
                      out: np.ndarray, pos: int) -> int:
    pc = time.perf_counter_ns
    odd = 0
    for _ in range(n):
        t0 = pc()
        d = predict_batch(keys, ctx, priority="normal")
        t1 = pc()
        out[pos] = t1 - t0
        pos += 1
        if d.flags.any() or d.rungs.any():
            odd += 1
    return odd


def loop_run(run: Any, xs: list[np.ndarray], out: np.ndarray, pos: int) -> int:
    pc = time.perf_counter_ns
    for x in xs:
        t0 = pc()
        run(x)
        t1 = pc()
        out[pos] = t1 - t0
        pos += 1
    return 0


def loop_ort(sess_run: Any, names: list[str], feeds: list[dict[str, np.ndarray]], out: np.ndarray,
             pos: int) -> int:
    pc = time.perf_counter_ns
    for feed in feeds:
        t0 = pc()
        sess_run(names, feed)
        t1 = pc()
        out[pos] = t1 - t0
        pos += 1
    return 0


def loop_spin(spin_ns: list[int], n: int, out: np.ndarray, pos: int) -> int:
    """A pure-Python busy wait as long as the engine's p50: the machine's own tail for a
    call of that length (preemptions hit a longer call more often)."""
    pc = time.perf_counter_ns
    d = spin_ns[0]
    for _ in range(n):
        t0 = pc()
        end = t0 + d
        while pc() < end:
            pass
        t1 = pc()
        out[pos] = t1 - t0
        pos += 1
    return 0


def loop_timer(xs: list[np.ndarray], out: np.ndarray, pos: int) -> int:
    pc = time.perf_counter_ns
    for _x in xs:
        t0 = pc()
        t1 = pc()
        out[pos] = t1 - t0
        pos += 1
    return 0


class Series:
    """One measured call shape: ``block(n)`` times ``n`` calls into the series' buffer."""

    def __init__(self, name: str, batch: int, total: int, block: int,
                 make: Callable[[int, np.ndarray, int], int]) -> None:
        self.name = name
        self.batch = batch
        self.block = block
        self.samples = np.zeros(total, dtype=np.int64)
        self.n = 0
        self.odd = 0  # decisions not answered by the primary rung, or flagged
        self._make = make

    def warm(self, n: int) -> None:
        scratch = np.zeros(self.block, dtype=np.int64)
        while n > 0:
            self._make(min(n, self.block), scratch, 0)
            n -= self.block

    def run_block(self) -> None:
        n = min(self.block, len(self.samples) - self.n)
        if n > 0:
            self.odd += self._make(n, self.samples, self.n)
            self.n += n

    def stats(self) -> dict[str, float]:
        us = self.samples[: self.n] / 1e3
        p50, p99, p999, p9999 = np.percentile(us, [50, 99, 99.9, 99.99])
        return {"n": self.n, "batch": self.batch, "p50": p50, "p99": p99, "p999": p999, "p9999": p9999,
                "mean": float(us.mean()), "max": float(us.max())}


def cycle(items: list[Any], n: int) -> list[Any]:
    return [items[i % len(items)] for i in range(n)]


# -- setup ---------------------------------------------------------------------------------------
class Feed:
    """Generated ticks for ``N_INSTRUMENTS`` instruments, applied in order to one or more
    services; when exhausted it starts over with event times shifted past the last one."""

    def __init__(self, seed: int) -> None:
        ticks = example_module("ticks")
        cols = ticks.generate_ticks(TICKS_SECONDS, n_instruments=N_INSTRUMENTS, seed=seed)
        self.events: list[dict[str, Any]] = ticks.events(cols)
        self.span = int(cols["ts_ns"][-1] - cols["ts_ns"][0]) + 1
        self.pos = 0
        self.shift = 0
        self.quotes: dict[str, dict[str, float]] = {}  # latest quote per symbol

    def apply(self, services: list[Any], n: int) -> None:
        for _ in range(n):
            if self.pos == len(self.events):
                self.pos = 0
                self.shift += self.span
            ev = self.events[self.pos]
            self.pos += 1
            if self.shift:
                ev = {**ev, "ts_ns": ev["ts_ns"] + self.shift}
            for svc in services:
                svc.stream.apply("instrument", ev["symbol"], ev)
            self.quotes[ev["symbol"]] = {k: float(ev[k]) for k in ("bid", "ask", "bid_size", "ask_size")}


def onnx_runtime_of(svc: Any, name: str) -> tuple[Any, Path, Any, str]:
    """tailguard's ONNX backend (I/O binding) for the served version of model ``name``, the
    model file, its artifact entry and a note ("" when tailguard's class works as shipped)."""
    m = svc.models[name]
    spec = next(s for s in svc.spec.models if s.name == name)
    path = svc.directory / spec.repository / m.name / m.version / m.manifest.artifact("onnx").path
    art = m.manifest.artifact("onnx")
    kw = {"input_name": art.input_name, "output_name": art.output_name,
          "output_columns": art.output_columns}
    return OnnxRuntime(path, **kw), path, art, ""


def plain_session(path: Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def feature_rows(svc: Any, symbols: list[str], ctx: dict[str, np.ndarray]) -> np.ndarray:
    """The primary model's input rows for ``symbols``: what the engine assembles, read through
    the assembler's public ``fill_many`` into a scratch matrix."""
    asm = svc.engine.assembler
    rows = svc.store.rows("instrument", symbols).reshape(-1, 1)
    wide = np.zeros((len(symbols), asm.width), dtype=np.float32)
    asm.fill_many(rows, ctx, wide, time.perf_counter_ns())
    cols = asm.column_index(svc.models["alpha"].manifest.inputs)
    return np.ascontiguousarray(wide[:, cols])


def build(args: argparse.Namespace) -> tuple[list[Series], dict[str, Any], Callable[[], None]]:
    from tailguard.models.repository import warm_up
    from tailguard.models.runtime import ServiceTime

    ensure_models()
    svc = tailguard.load_service(SERVICE_DIR)
    services = [svc]
    svc_onnx = None
    if not args.no_engine_onnx:
        # A second copy of the service whose primary answers through ONNX Runtime (I/O binding).
        svc_onnx = tailguard.load_service(SERVICE_DIR)
        m = svc_onnx.models["alpha"]
        m.runtime, _, _, _ = onnx_runtime_of(svc_onnx, "alpha")
        m.service_time = ServiceTime()
        warm_up(m, 200)
        services.append(svc_onnx)
    feed = Feed(args.seed)
    feed.apply(services, args.ticks)
    symbols = sorted(feed.quotes)[:BATCH]
    if len(symbols) < BATCH:
        raise SystemExit(f"only {len(symbols)} instruments ticked in {args.ticks} ticks; raise --ticks")
    quotes = [dict(feed.quotes[s]) for s in symbols]
    ctx64 = {k: np.array([q[k] for q in quotes]) for k in ("bid", "ask", "bid_size", "ask_size")}
    x64 = feature_rows(svc, symbols, ctx64)
    x1s = [x64[i : i + 1].copy() for i in range(BATCH)]  # preallocated (1, n_inputs) float32 rows

    raw = svc.models["alpha"].runtime
    onnx_io, onnx_path, art, onnx_note = onnx_runtime_of(svc, "alpha")
    sess = plain_session(onnx_path)
    names = [art.output_name]
    col = art.output_columns[0] if art.output_columns else 0

    # Every backend must give the same answers on these rows before its speed means anything.
    # (priority "bulk": its 20 ms budget lets the primary answer even the cold first call.)
    ref = raw.run(x64).copy()
    svc.engine.predict_batch(symbols, ctx64, priority="bulk")
    eng = svc.engine.predict_batch(symbols, ctx64, priority="bulk").outputs
    diffs = {
        "engine": float(np.abs(eng - ref).max()),
        "onnx_iobinding": float(np.abs(onnx_io.run(x64) - ref).max()),
        "ort_run": float(np.abs(sess.run(names, {art.input_name: x64})[0][:, col] - ref[:, 0]).max()),
    }
    if svc_onnx is not None:
        svc_onnx.engine.predict_batch(symbols, ctx64, priority="bulk")
        e2 = svc_onnx.engine.predict_batch(symbols, ctx64, priority="bulk").outputs
        diffs["engine_onnx"] = float(np.abs(e2 - ref).max())

    rounds = max(1, math.ceil(args.iterations / args.block))
    block64 = max(1, math.ceil(args.iterations64 / rounds))
    n1, n64 = args.iterations, args.iterations64
    calls = cycle(list(zip(symbols, quotes, strict=True)), args.block)
    xs = cycle(x1s, args.block)
    feeds = [{art.input_name: x} for x in xs]
    x64s = [x64] * block64
    feeds64 = [{art.input_name: x64}] * block64
    predict, predict_batch = svc.engine.predict, svc.engine.predict_batch
    spin_ns = [5_000]  # calibrated to the engine's p50 after warm-up (see measure)
    series = [
        Series("timer", 1, n1, args.block, lambda n, o, p: loop_timer(xs[:n], o, p)),
        Series("spin", 1, n1, args.block, lambda n, o, p: loop_spin(spin_ns, n, o, p)),
        Series("raw", 1, n1, args.block, lambda n, o, p: loop_run(raw.run, xs[:n], o, p)),
        Series("engine", 1, n1, args.block, lambda n, o, p: loop_engine1(predict, calls[:n], o, p)),
        Series("onnx_iobinding", 1, n1, args.block, lambda n, o, p: loop_run(onnx_io.run, xs[:n], o, p)),
        Series("ort_run", 1, n1, args.block, lambda n, o, p: loop_ort(sess.run, names, feeds[:n], o, p)),
        Series("raw64", BATCH, n64, block64, lambda n, o, p: loop_run(raw.run, x64s[:n], o, p)),
        Series("engine64", BATCH, n64, block64,
               lambda n, o, p: loop_engine_batch(predict_batch, symbols, ctx64, n, o, p)),
        Series("onnx_iobinding64", BATCH, n64, block64,
               lambda n, o, p: loop_run(onnx_io.run, x64s[:n], o, p)),
        Series("ort_run64", BATCH, n64, block64,
               lambda n, o, p: loop_ort(sess.run, names, feeds64[:n], o, p)),
    ]
    if svc_onnx is not None:
        predict_onnx = svc_onnx.engine.predict
        series.insert(3, Series("engine_onnx", 1, n1, args.block,
                                lambda n, o, p: loop_engine1(predict_onnx, calls[:n], o, p)))

    def between() -> None:
        for s in services:
            s.run_side_path()

    def between_rounds() -> None:
        feed.apply(services, TICKS_PER_ROUND)

    info = {"svc": svc, "onnx_note": onnx_note, "spin_ns": spin_ns, "rounds": rounds, "block64": block64,
            "max_abs_diff": diffs, "between_rounds": between_rounds, "services": services}
    return series, info, between


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime

    t_start = time.perf_counter()
    series, info, between = build(args)
    svc = info["svc"]
    tailguard.tune_gc()  # the documented serving setup: freeze what is loaded, rarer gen-0 GCs
    for s in series:
        s.warm(args.warmup if s.batch == 1 else max(1, args.warmup // 10))
        between()
    engine = next(s for s in series if s.name == "engine")
    scratch = np.zeros(engine.block, dtype=np.int64)
    engine._make(engine.block, scratch, 0)
    info["spin_ns"][0] = max(int(np.median(scratch)) - 40, 0)  # minus the timer's own cost
    for s in info["services"]:
        if s.latency is not None:
            s.latency.reset()
    gc_before = [g["collections"] for g in gc.get_stats()]
    rounds = info["rounds"]
    log(f"measuring {len(series)} series in {rounds} interleaved rounds "
        f"(blocks of {args.block} at batch 1, {info['block64']} at batch {BATCH})")
    t_measure = time.perf_counter()
    for r in range(rounds):
        k = r % len(series)
        for s in series[k:] + series[:k]:
            s.run_block()
            between()
        info["between_rounds"]()
    measure_s = time.perf_counter() - t_measure
    gc_after = [g["collections"] for g in gc.get_stats()]
    stages = svc.latency_snapshot() if svc.latency is not None else {}
    stats = {s.name: s.stats() for s in series}
    odd = {s.name: s.odd for s in series if s.odd}
    engines = {}
    for label, s in zip(("engine", "engine_onnx"), info["services"], strict=False):
        st = s.engine.statistics()
        engines[label] = {k: st[k] for k in ("requests", "stale", "unknown_entities", "deadline_missed")}
        engines[label]["answered"] = {r: v["answered"] for r, v in st["rungs"].items()}
        engines[label]["skipped_budget"] = {r: v["skipped_budget"] for r, v in st["rungs"].items()}
    return {"stats": stats, "odd": odd, "engines": engines, "stages": stages, "info": info,
            "measure_s": measure_s,
            "total_s": time.perf_counter() - t_start,
            "gc": [a - b for a, b in zip(gc_after, gc_before, strict=True)],
            "versions": {"python": platform.python_version(), "numpy": np.__version__,
                         "onnxruntime": onnxruntime.__version__, "tailguard": _dist_version("tailguard")}}


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def summarize(res: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    st = res["stats"]

    def r4(v: float) -> float:
        return round(float(v), 3)

    out: dict[str, Any] = {
        "raw_p50_us": r4(st["raw"]["p50"]),
        "engine_p50_us": r4(st["engine"]["p50"]),
        "overhead_p50_us": r4(st["engine"]["p50"] - st["raw"]["p50"]),
        "raw_p999_us": r4(st["raw"]["p999"]),
        "engine_p999_us": r4(st["engine"]["p999"]),
        "p999_over_raw_p999": r4(st["engine"]["p999"] / st["raw"]["p999"]),
        "batch64_over_batch1": r4(st["engine64"]["p50"] / st["engine"]["p50"]),
        "overhead_p999_us": r4(st["engine"]["p999"] - st["raw"]["p999"]),
        "overhead64_p50_us": r4(st["engine64"]["p50"] - st["raw64"]["p50"]),
        "engine_p999_over_p50": r4(st["engine"]["p999"] / st["engine"]["p50"]),
        "raw_p999_over_p50": r4(st["raw"]["p999"] / st["raw"]["p50"]),
        # Duration-matched baseline: a busy wait as long as the engine's p50, same run.
        "spin_ns": res["info"]["spin_ns"][0],
        "engine_p999_over_spin_p999": r4(st["engine"]["p999"] / st["spin"]["p999"]),
    }
    for name, s in st.items():
        for q in ("p50", "p99", "p999", "p9999", "max"):
            out[f"{name}_{q}_us"] = r4(s[q])
    out["iterations"] = {name: s["n"] for name, s in st.items()}
    out["rounds"] = res["info"]["rounds"]
    if res["info"]["onnx_note"]:
        out["onnx_iobinding_note"] = res["info"]["onnx_note"]
    out["max_abs_diff_vs_raw"] = res["info"]["max_abs_diff"]
    out["engine_non_primary_or_flagged"] = res["odd"]
    out["engine_statistics"] = res["engines"]
    out["gc_collections_during_measurement"] = res["gc"]
    if res["stages"]:
        one = res["stages"]["predict"]
        out["engine_stage_p50_us"] = {k: r4(v["p50_us"]) for k, v in one.items()}
        out["engine_stage_p999_us"] = {k: r4(v["p999_us"]) for k, v in one.items()}
    out["targets"] = {name: {"value": out[name], "limit": lim, "pass": bool(out[name] <= lim)}
                      for name, lim, _ in TARGETS}
    out["measure_s"] = round(res["measure_s"], 1)
    out["total_s"] = round(res["total_s"], 1)
    out.update(res["versions"])
    out["cpus"] = os.cpu_count()
    out["machine"] = platform.machine()
    return out


def report(res: dict[str, Any], summary: dict[str, Any], stream: Any) -> None:
    st = res["stats"]

    def p(*a: Any) -> None:
        print(*a, file=stream)

    p(f"tailguard in-process benchmark: trading service, primary 'alpha' "
      f"({res['info']['svc'].models['alpha'].runtime.kind} runtime); "
      f"python {summary['python']}, numpy {summary['numpy']}, onnxruntime {summary['onnxruntime']}, "
      f"{summary['cpus']} cpus")
    p(f"{'series':<18}{'batch':>6}{'calls':>9}{'p50':>9}{'p99':>9}{'p99.9':>9}{'p99.99':>9}{'max':>10}"
      f"{'p50/raw':>9}   (us)")
    for name, s in st.items():
        base = st["raw" if s["batch"] == 1 else "raw64"]["p50"]
        p(f"{name:<18}{s['batch']:>6}{s['n']:>9}{s['p50']:>9.2f}{s['p99']:>9.2f}"
          f"{s['p999']:>9.2f}{s['p9999']:>9.2f}{s['max']:>10.1f}{s['p50'] / base:>9.2f}")
    if summary.get("onnx_iobinding_note"):
        p(f"note: onnx_iobinding / engine_onnx use a {summary['onnx_iobinding_note']}")
    p("timer = two perf_counter_ns calls with nothing between (included in every figure)")
    p(f"spin = a pure-Python busy wait of {summary['spin_ns'] / 1e3:.2f} us (the engine's p50): the "
      f"machine's own tail for a call that long; engine p99.9 / spin p99.9 = "
      f"{summary['engine_p999_over_spin_p999']:.3f}")
    p(f"engine overhead over raw: p50 {summary['overhead_p50_us']:.2f} us, "
      f"p99.9 {summary['overhead_p999_us']:.2f} us; batch {BATCH}: p50 {summary['overhead64_p50_us']:.2f} us")
    if "engine_stage_p50_us" in summary:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in summary["engine_stage_p50_us"].items())
        p(f"engine's own stage timings, p50 us: {stages}")
    p(f"outputs vs raw, max |diff|: {summary['max_abs_diff_vs_raw']}; "
      f"non-primary/flagged decisions: {summary['engine_non_primary_or_flagged'] or 0}; "
      f"GC collections while measuring (gen0, gen1, gen2): {summary['gc_collections_during_measurement']}")
    for label, es in summary["engine_statistics"].items():
        below = sum(v for r, v in es["answered"].items() if r != "primary")
        total = sum(es["answered"].values())
        if below > 0.001 * total:
            # A lower rung is cheaper than the primary: the engine's figures then flatter it.
            p(f"WARNING: {label}: {below} of {total} rows answered below the primary rung "
              f"(skipped for budget: {es['skipped_budget']}); its figures mix rungs")
    for name, lim, desc in TARGETS:
        v = summary[name]
        p(f"{'PASS' if v <= lim else 'FAIL'} {name} = {v:.3f} (target: {desc})")
    p(f"measured for {summary['measure_s']} s, {summary['total_s']} s in all")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=200_000, help="measured calls per batch-1 series")
    ap.add_argument("--iterations64", type=int, default=20_000, help="measured calls per batch-64 series")
    ap.add_argument("--block", type=int, default=1000, help="batch-1 calls per interleaved block")
    ap.add_argument("--warmup", type=int, default=5000, help="unmeasured batch-1 calls per series first")
    ap.add_argument("--ticks", type=int, default=5000, help="ticks replayed into the store before measuring")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU (Linux)")
    ap.add_argument("--no-engine-onnx", action="store_true", help="skip the engine-on-ONNX series")
    ap.add_argument("--json", action="store_true", help="table to stderr, one JSON object on stdout")
    args = ap.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    res = measure(args)
    summary = summarize(res, args)
    report(res, summary, sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(summary, sort_keys=False), flush=True)


if __name__ == "__main__":
    main()
