"""Measuring a candidate: accuracy on held-out labelled rows, latency at batch 1 and 64.

Accuracy is scored on the evaluation half of the validation rows (``optimize.data``) on the
model's first output: AUC for a binary label and a probability output (the loss is the
*absolute* AUC drop against the baseline), mean squared error otherwise (the loss is the
*relative* MSE increase).  The manifest's ``metrics`` decide when they name ``auc`` or
``mse``.  Each candidate's largest absolute difference from the baseline's outputs is kept
too: a graph rewrite should change nothing, a quantised graph a little.

Latency is per call of the runtime as the engine calls it (``run`` on a float32 batch), in
many repetitions per block; blocks interleave the candidates (in a rotating order) so that a
noisy neighbour or a frequency change hits all of them, and each percentile reported is the
best block's.  The garbage collector is off while timing.  Owner: the calling thread.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tailguard.models.manifest import Manifest
from tailguard.models.runtime import Runtime
from tailguard.observe.quality import auc

__all__ = ["Accuracy", "Latency", "accuracy", "loss", "metric_kind", "measure_latency", "predict"]

BATCH_SIZES = (1, 64)
_DISTINCT_BATCHES = 16


@dataclass(frozen=True)
class Accuracy:
    """A candidate's figures on the evaluation rows: ``value`` of ``metric`` (``auc`` or
    ``mse``), log loss (binary only), largest |difference| from the baseline's outputs, and
    whether every output was finite."""

    metric: str
    value: float
    logloss: float | None
    max_abs_diff: float
    finite: bool


@dataclass(frozen=True)
class Latency:
    """Best-block p50 and p99 per batch size, in microseconds per call."""

    p50_us: dict[int, float]
    p99_us: dict[int, float]


def metric_kind(manifest: Manifest, y: np.ndarray, p: np.ndarray) -> str:
    """``auc`` or ``mse``: the manifest's metrics decide, else a 0/1 label with outputs in [0, 1]
    means a probability (AUC)."""
    if "auc" in manifest.metrics:
        return "auc"
    if "mse" in manifest.metrics or "rmse" in manifest.metrics:
        return "mse"
    binary = bool(np.isin(y, (0.0, 1.0)).all()) and len(np.unique(y)) == 2
    in_unit = bool(np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0)
    return "auc" if binary and in_unit else "mse"


def predict(rt: Runtime, x: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """The runtime's outputs (n, n_outputs) for all rows of ``x``, copied out of its buffers."""
    out = np.empty((len(x), rt.n_outputs), dtype=np.float64)
    for i in range(0, len(x), chunk):
        out[i:i + chunk] = rt.run(np.ascontiguousarray(x[i:i + chunk]))
    return out


def accuracy(kind: str, y: np.ndarray, p: np.ndarray, baseline: np.ndarray) -> Accuracy:
    """Score the first output column ``p`` against labels ``y`` and the baseline's ``baseline``."""
    finite = bool(np.isfinite(p).all())
    diff = float(np.max(np.abs(p - baseline))) if finite and len(p) else float("inf")
    if not finite:
        return Accuracy(kind, float("nan"), None, diff, False)
    if kind == "auc":
        q = np.clip(p, 1e-7, 1 - 1e-7)
        ll = float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))
        return Accuracy(kind, auc(y, p), ll, diff, True)
    return Accuracy(kind, float(np.mean((p - y) ** 2)), None, diff, True)


def loss(kind: str, baseline: float, candidate: float) -> float:
    """How much worse the candidate is: AUC drop (absolute), or MSE increase relative to the
    baseline's (absolute when the baseline's is 0).  Negative: better.  NaN stays NaN."""
    if kind == "auc":
        return baseline - candidate
    return (candidate - baseline) / baseline if baseline > 0 else candidate - baseline


def _batches(x: np.ndarray, size: int) -> list[np.ndarray]:
    """Distinct C-contiguous float32 batches drawn from ``x`` (rows repeat if x is short)."""
    rng = np.random.default_rng(size)
    return [np.ascontiguousarray(x[rng.integers(0, len(x), size)], dtype=np.float32)
            for _ in range(_DISTINCT_BATCHES)]


def _time(rt: Runtime, batches: Sequence[np.ndarray], reps: int, out: np.ndarray) -> None:
    now = time.perf_counter_ns
    run = rt.run
    k = len(batches)
    for i in range(reps):
        b = batches[i % k]
        t0 = now()
        run(b)
        out[i] = now() - t0


def measure_latency(
    runtimes: Mapping[str, Runtime], x: np.ndarray, *, batch_sizes: Sequence[int] = BATCH_SIZES,
    reps: int = 400, blocks: int = 5,
) -> dict[str, Latency]:
    """Latency of each runtime: ``blocks`` interleaved blocks of ``reps`` calls per batch size."""
    names = list(runtimes)
    pools = {b: _batches(x, b) for b in batch_sizes}
    best50 = {n: dict.fromkeys(batch_sizes, float("inf")) for n in names}
    best99 = {n: dict.fromkeys(batch_sizes, float("inf")) for n in names}
    warm = max(reps // 10, 8)
    buf = np.empty(max(reps, warm), dtype=np.int64)
    for n in names:  # warm-up: bindings made, caches and branch predictors trained
        for b in batch_sizes:
            _time(runtimes[n], pools[b], warm, buf)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for block in range(blocks):
            order = names[block % len(names):] + names[:block % len(names)] if names else []
            for n in order:
                for b in batch_sizes:
                    _time(runtimes[n], pools[b], reps, buf)
                    p50, p99 = np.percentile(buf[:reps], (50.0, 99.0))
                    best50[n][b] = min(best50[n][b], float(p50) / 1e3)
                    best99[n][b] = min(best99[n][b], float(p99) / 1e3)
    finally:
        if was_enabled:
            gc.enable()
    return {n: Latency(best50[n], best99[n]) for n in names}
