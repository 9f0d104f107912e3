"""Tree-ensemble runtimes compared: the measurement behind tailguard's compiled-tree runtime.

What it measures.  One LightGBM GBDT -- 200 trees, 31 leaves, 32 features, binary objective,
trained here on synthetic data (a fixed seed) -- scored one row and 64 rows at a time by:

* ``lightgbm``: ``Booster.predict(x, num_threads=1)``;
* ``ort_run``: ONNX Runtime ``InferenceSession.run`` on the onnxmltools export (one intra-op
  thread, no spinning: the latency configuration);
* ``onnx_iobinding``: tailguard's ONNX backend, ``tailguard.models.onnx.OnnxRuntime`` (the same
  session settings, I/O bound once per batch size to preallocated buffers);
* ``tl2cgen_predictor``: tl2cgen's ``Predictor.predict(DMatrix(x))`` (a DMatrix made per call,
  as a caller holding a numpy row must) and ``tl2cgen_predictor_dmatrix_reused`` (the DMatrix
  made once: the wrapper's floor);
* ``tailguard_trees``: ``TreesRuntime.run(x)`` on the library built by
  ``tailguard.models.trees.compile_lightgbm`` (tl2cgen's C code plus tailguard's batch shim, one
  ctypes call per batch).  The tl2cgen Predictor rows load this same library, so those two
  differ only in the calling path;
* ``lleaves`` (LLVM-compiled trees), when it imports and compiles; otherwise it is reported as
  ``unavailable: <reason>``.

How.  Each backend's outputs are first checked against LightGBM's on the same 64 rows.  Every
call is timed with ``time.perf_counter_ns``, after a warm-up, in blocks interleaved across
backends (the order rotated every round) so that machine noise falls on all of them alike;
batch-1 calls cycle over the 64 held-out rows.  Reported: p50, p99 and p99.9 in microseconds
and each figure's ratio to the fastest backend's at the same batch size.

Run: ``.venv/bin/python benchmarks/trees.py`` (a table) or ``--json`` (the table goes to stderr,
the last stdout line is one JSON object).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

N_TREES = 200
N_LEAVES = 31
N_FEATURES = 32
BATCH = 64
SEED = 11


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def dist_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def synthetic(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Features with interactions and a little missing data; a noisy binary label."""
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    x[rng.random(x.shape) < 0.01] = np.nan
    z = np.nan_to_num(x)
    logit = (z[:, 0] * z[:, 1] + np.sin(2 * z[:, 2]) + 0.5 * z[:, 3:8].sum(axis=1)
             - np.abs(z[:, 8]) + 0.3 * (z[:, 9] > 0.5) * z[:, 10])
    y = (logit + rng.normal(scale=1.0, size=n) > 0).astype(np.int32)
    return x, y


def train(workdir: Path) -> tuple[Any, Path, np.ndarray]:
    import lightgbm as lgb

    rng = np.random.default_rng(SEED)
    x, y = synthetic(20_000, rng)
    params = {"objective": "binary", "num_leaves": N_LEAVES, "learning_rate": 0.05,
              "min_data_in_leaf": 20, "seed": SEED, "deterministic": True, "num_threads": 2,
              "verbose": -1}
    booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=N_TREES)
    path = workdir / "model.txt"
    booster.save_model(str(path))
    rows, _ = synthetic(BATCH, rng)  # held out: the inputs every backend is timed on
    return booster, path, rows


# -- backends: each returns (call for one input, the inputs it cycles over) ----------------------
Backend = tuple[Callable[[Any], Any], Callable[[np.ndarray], Any], Callable[[Any], np.ndarray]]
# (call, prepare: numpy rows -> the argument the call takes, to_probability: result -> (n,) array)


def backend_lightgbm(booster: Any, workdir: Path) -> Backend:
    predict = booster.predict

    def call(x: np.ndarray) -> Any:
        return predict(x, num_threads=1)

    return call, lambda x: x, lambda r: np.asarray(r, dtype=np.float64).ravel()


def export_onnx(booster: Any, workdir: Path) -> Path:
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    onx = onnxmltools.convert_lightgbm(booster, initial_types=[("x", FloatTensorType([None, N_FEATURES]))],
                                       zipmap=False, target_opset=15)
    path = workdir / "model.onnx"
    path.write_bytes(onx.SerializeToString())
    return path


def backend_ort_run(booster: Any, workdir: Path) -> Backend:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(workdir / "model.onnx"), so, providers=["CPUExecutionProvider"])
    run = sess.run
    names = ["probabilities"]
    return (lambda feed: run(names, feed)), (lambda x: {"x": x}), (lambda r: r[0][:, 1].astype(np.float64))


def backend_onnx_iobinding(booster: Any, workdir: Path) -> Backend:
    from tailguard.models.onnx import OnnxRuntime

    # Both probability columns are bound: OnnxRuntime's column selection (output_columns=(1,))
    # fails on float32 outputs with numpy 2 (np.take refuses the float32 -> float64 cast), so the
    # shipped class is measured with its identity copy; column 1 is P(class 1).
    rt = OnnxRuntime(workdir / "model.onnx", input_name="x", output_name="probabilities")
    return rt.run, (lambda x: x), (lambda r: r[:, 1].astype(np.float64))


def compile_trees(booster: Any, workdir: Path) -> Path:
    from tailguard.models.trees import compile_lightgbm

    return compile_lightgbm(workdir / "model.txt", workdir / "trees", lib_name="model.so")


def backend_tailguard_trees(booster: Any, workdir: Path) -> Backend:
    from tailguard.models.trees import TreesRuntime

    rt = TreesRuntime(workdir / "trees" / "model.so")
    return rt.run, (lambda x: x), (lambda r: r[:, 0].copy())


def _tl2cgen_predictor(workdir: Path) -> Any:
    import tl2cgen

    return tl2cgen.Predictor(workdir / "trees" / "model.so", nthread=1)


def backend_tl2cgen_predictor(booster: Any, workdir: Path) -> Backend:
    import tl2cgen

    predict = _tl2cgen_predictor(workdir).predict
    dmatrix = tl2cgen.DMatrix

    def call(x: np.ndarray) -> Any:
        return predict(dmatrix(x))

    return call, (lambda x: x), (lambda r: np.asarray(r, dtype=np.float64).ravel())


def backend_tl2cgen_reused(booster: Any, workdir: Path) -> Backend:
    import tl2cgen

    predict = _tl2cgen_predictor(workdir).predict
    return predict, (lambda x: tl2cgen.DMatrix(x)), (lambda r: np.asarray(r, dtype=np.float64).ravel())


def backend_lleaves(booster: Any, workdir: Path) -> Backend:
    import lleaves

    model = lleaves.Model(model_file=str(workdir / "model.txt"))
    model.compile(cache=str(workdir / "lleaves.o"))
    predict = model.predict

    def call(x: np.ndarray) -> Any:
        return predict(x, n_jobs=1)

    return call, (lambda x: x.astype(np.float64)), (lambda r: np.asarray(r, dtype=np.float64).ravel())


BACKENDS: dict[str, Callable[[Any, Path], Backend]] = {
    "lightgbm": backend_lightgbm,
    "ort_run": backend_ort_run,
    "onnx_iobinding": backend_onnx_iobinding,
    "tl2cgen_predictor": backend_tl2cgen_predictor,
    "tl2cgen_predictor_dmatrix_reused": backend_tl2cgen_reused,
    "tailguard_trees": backend_tailguard_trees,
    "lleaves": backend_lleaves,
}


# -- measuring -------------------------------------------------------------------------------------
def timed_block(call: Callable[[Any], Any], args: list[Any], out: np.ndarray, pos: int) -> None:
    pc = time.perf_counter_ns
    for a in args:
        t0 = pc()
        call(a)
        t1 = pc()
        out[pos] = t1 - t0
        pos += 1


class Series:
    def __init__(self, name: str, batch: int, call: Callable[[Any], Any], args: list[Any], total: int,
                 block: int) -> None:
        self.name, self.batch, self.call, self.block = name, batch, call, block
        self.args = [args[i % len(args)] for i in range(block)]
        self.samples = np.zeros(total, dtype=np.int64)
        self.n = 0

    def warm(self, n: int) -> None:
        scratch = np.zeros(self.block, dtype=np.int64)
        while n > 0:
            timed_block(self.call, self.args[: min(n, self.block)], scratch, 0)
            n -= self.block

    def run_block(self) -> None:
        k = min(self.block, len(self.samples) - self.n)
        if k > 0:
            timed_block(self.call, self.args[:k], self.samples, self.n)
            self.n += k

    def stats(self) -> dict[str, float]:
        us = self.samples[: self.n] / 1e3
        p50, p99, p999 = np.percentile(us, [50, 99, 99.9])
        return {"n": self.n, "p50_us": round(float(p50), 3), "p99_us": round(float(p99), 3),
                "p999_us": round(float(p999), 3), "max_us": round(float(us.max()), 3)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import lightgbm
    import onnxruntime
    import tl2cgen
    import treelite

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tg-trees-bench-") as tmp:
        workdir = Path(tmp)
        log(f"training {N_TREES} trees x {N_LEAVES} leaves on {N_FEATURES} synthetic features")
        booster, _, rows = train(workdir)
        export_onnx(booster, workdir)
        t0 = time.perf_counter()
        compile_trees(booster, workdir)
        compile_s = time.perf_counter() - t0
        log(f"compiled the trees to C and a shared library in {compile_s:.1f} s")
        expected = booster.predict(rows, num_threads=1)
        backends: dict[str, Backend] = {}
        unavailable: dict[str, str] = {}
        max_diff: dict[str, float] = {}
        for name, make in BACKENDS.items():
            try:
                b = make(booster, workdir)
                got = b[2](b[0](b[1](rows)))
            except Exception as exc:  # a backend that cannot load is reported, not fatal
                unavailable[name] = f"unavailable: {type(exc).__name__}: {exc}"
                log(f"{name}: {unavailable[name]}")
                continue
            diff = float(np.abs(got - expected).max())
            max_diff[name] = diff
            if not diff < 1e-4:
                unavailable[name] = f"wrong answers: max |p - lightgbm| = {diff:.3g}"
                log(f"{name}: {unavailable[name]}")
                continue
            backends[name] = b

        rounds = max(1, math.ceil(args.iterations / args.block))
        block64 = max(1, math.ceil(args.iterations64 / rounds))
        singles = [rows[i : i + 1].copy() for i in range(BATCH)]
        series: list[Series] = []
        for name, (call, prep, _) in backends.items():
            series.append(Series(name, 1, call, [prep(x) for x in singles], args.iterations, args.block))
            series.append(Series(name, BATCH, call, [prep(rows)], args.iterations64, block64))
        for s in series:
            s.warm(args.warmup if s.batch == 1 else max(1, args.warmup // 10))
        log(f"measuring {len(backends)} backends in {rounds} interleaved rounds "
            f"(blocks of {args.block} at batch 1, {block64} at batch {BATCH})")
        t_measure = time.perf_counter()
        for r in range(rounds):
            k = r % len(series)
            for s in series[k:] + series[:k]:
                s.run_block()
        measure_s = time.perf_counter() - t_measure

    result: dict[str, Any] = {
        "model": {"trees": N_TREES, "leaves": N_LEAVES, "features": N_FEATURES, "objective": "binary"},
    }
    for batch in (1, BATCH):
        table = {s.name: s.stats() for s in series if s.batch == batch}
        if not table:
            continue
        best50 = min(v["p50_us"] for v in table.values())
        best99 = min(v["p99_us"] for v in table.values())
        best999 = min(v["p999_us"] for v in table.values())
        for v in table.values():
            v["p50_ratio"] = round(v["p50_us"] / best50, 2)
            v["p99_ratio"] = round(v["p99_us"] / best99, 2)
            v["p999_ratio"] = round(v["p999_us"] / best999, 2)
        result[f"batch{batch}"] = table
        result[f"fastest_batch{batch}"] = min(table, key=lambda n: table[n]["p50_us"])
    result["unavailable"] = unavailable
    result["max_abs_diff_vs_lightgbm"] = max_diff
    result["iterations"] = {"batch1": args.iterations, f"batch{BATCH}": args.iterations64}
    result["compile_s"] = round(compile_s, 1)
    result["measure_s"] = round(measure_s, 1)
    result["total_s"] = round(time.perf_counter() - t_start, 1)
    result["versions"] = {
        "python": platform.python_version(), "numpy": np.__version__, "lightgbm": lightgbm.__version__,
        "onnxruntime": onnxruntime.__version__, "tl2cgen": tl2cgen.__version__,
        "treelite": treelite.__version__, "lleaves": dist_version("lleaves"),
        "llvmlite": dist_version("llvmlite"), "tailguard": dist_version("tailguard"),
    }
    result["cpus"] = os.cpu_count()
    return result


def report(res: dict[str, Any], stream: Any) -> None:
    def p(*a: Any) -> None:
        print(*a, file=stream)

    m = res["model"]
    p(f"tree runtimes: LightGBM GBDT, {m['trees']} trees x {m['leaves']} leaves, {m['features']} features "
      f"({res['cpus']} cpus; python {res['versions']['python']})")
    for batch in (1, BATCH):
        table = res.get(f"batch{batch}")
        if not table:
            continue
        p(f"\nbatch {batch}  (us; ratio = figure / fastest figure at this batch)")
        p(f"{'backend':<34}{'p50':>9}{'p99':>9}{'p99.9':>9}{'p50 x':>8}{'p99 x':>8}{'p99.9 x':>9}")
        for name, v in sorted(table.items(), key=lambda kv: kv[1]["p50_us"]):
            p(f"{name:<34}{v['p50_us']:>9.2f}{v['p99_us']:>9.2f}{v['p999_us']:>9.2f}"
              f"{v['p50_ratio']:>8.2f}{v['p99_ratio']:>8.2f}{v['p999_ratio']:>9.2f}")
    for name, why in res["unavailable"].items():
        p(f"{name}: {why}")
    p("\nmax |p - lightgbm| on the 64 rows: "
      + ", ".join(f"{k} {v:.1e}" for k, v in res["max_abs_diff_vs_lightgbm"].items()))
    p(f"compile {res['compile_s']} s, measured {res['measure_s']} s, {res['total_s']} s in all")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=20_000, help="measured calls per backend at batch 1")
    ap.add_argument("--iterations64", type=int, default=4_000, help="measured calls per backend at batch 64")
    ap.add_argument("--block", type=int, default=500, help="batch-1 calls per interleaved block")
    ap.add_argument("--warmup", type=int, default=1000, help="unmeasured batch-1 calls per backend first")
    ap.add_argument("--cpu", type=int, default=None, help="pin the process to this CPU (Linux)")
    ap.add_argument("--json", action="store_true", help="table to stderr, one JSON object on stdout")
    args = ap.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    res = run(args)
    report(res, sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
