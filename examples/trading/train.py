"""Train the trading service's models from generated ticks (runs in well under a minute).

The training set is built by replaying ticks through the *serving* code path — the same
stream transform, the same online store, the same float32 feature rows and the same request
transform — so serving cannot drift from training.  The label is the direction of the mid
price 2 s after each tick.  Two LightGBM models are trained on the first 80% of the time
range and scored on the last 20%:

* ``alpha``: 200 trees (15 leaves) over all 10 features (the primary rung);
* ``alpha_fast``: 30 small trees (8 leaves) over 4 features (the fast rung).

Each is exported as a repository version (ONNX + compiled trees + manifest pinning the live
feature view versions).  Then the drift monitor's reference is written (the ``[drift]
reference`` path): the training rows' feature distributions and ``alpha``'s answers on them.
Run: ``python examples/trading/train.py [--force]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from ticks import events, future_up, generate_ticks  # noqa: E402

from tailguard.features.store import InMemoryOnlineStore  # noqa: E402
from tailguard.features.stream import StreamProcessor  # noqa: E402
from tailguard.features.view import compile_views  # noqa: E402
from tailguard.models.repository import list_versions  # noqa: E402
from tailguard.observe.quality import auc  # noqa: E402
from tailguard.spec import load_spec  # noqa: E402

PRIMARY_INPUTS = (
    "ticks.ret_1s", "ticks.ret_5s", "ticks.ret_30s", "ticks.vol_ewm_bps", "ticks.spread_ewm_bps",
    "ticks.imbalance_ewm", "ticks.trade_intensity", "ticks.flow_ewm",
    "quote.spread_bps", "quote.imbalance",
)
FAST_INPUTS = ("ticks.ret_5s", "ticks.imbalance_ewm", "ticks.flow_ewm", "quote.imbalance")
TRAIN_SECONDS = 900.0
SEED = 1


def build_matrix(service_dir: Path, cols: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """Replay ticks through the serving transforms; the feature row after every tick."""
    spec = load_spec(service_dir)
    views = compile_views(spec.feature_views, str(service_dir))
    store = InMemoryOnlineStore(views, spec.entities)
    stream = StreamProcessor(views, store)
    evs = events(cols)
    ticks_width = len(views["ticks"].spec.fields)
    x = np.empty((len(evs), ticks_width + 2), dtype=np.float32)
    for i, ev in enumerate(evs):
        stream.apply("instrument", ev["symbol"], ev)
        table = store.table("ticks")
        x[i, :ticks_width] = table.f32[store.row("instrument", ev["symbol"])]
    quote = views["quote"].transform
    assert quote is not None
    spread, imb = quote(cols["bid"], cols["ask"], cols["bid_size"], cols["ask_size"])  # type: ignore[operator]
    x[:, ticks_width] = spread
    x[:, ticks_width + 1] = imb
    names = [*views["ticks"].qualified(), *views["quote"].qualified()]
    return x, names


def _fit(x: np.ndarray, y: np.ndarray, rounds: int, leaves: int, lr: float, min_leaf: int) -> Any:
    import lightgbm as lgb

    params = {
        "objective": "binary",
        "learning_rate": lr,
        "num_leaves": leaves,
        "min_data_in_leaf": min_leaf,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "seed": SEED,
        "deterministic": True,
        "num_threads": 2,
        "verbose": -1,
    }
    return lgb.train(params, lgb.Dataset(x, y), num_boost_round=rounds)


def up_to_date(service_dir: Path) -> bool:
    """True when both models exist and pin the live feature view versions, and the drift
    reference describes the latest primary model on those versions."""
    from tailguard.models.manifest import read_manifest
    from tailguard.observe.reference import DriftReferenceError, Reference

    spec = load_spec(service_dir)
    live = {n: v.version for n, v in compile_views(spec.feature_views, str(service_dir)).items()}
    root = service_dir / "models"
    for name in ("alpha", "alpha_fast"):
        versions = list_versions(root, name)
        if not versions:
            return False
        m = read_manifest(root / name / versions[-1], verify=False)
        if any(live.get(v) != ver for v, ver in m.feature_versions.items()):
            return False
    try:
        meta = Reference.load(service_dir / spec.drift.reference).meta
    except DriftReferenceError:
        return False
    return bool(meta.get("model") == f"alpha/{list_versions(root, 'alpha')[-1]}"
                and all(live.get(v) == ver for v, ver in meta.get("feature_versions", {}).items()))


def decision_rows(cols: dict[str, np.ndarray], x: np.ndarray, until_ns: int, n: int = 50_000,
                  seed: int = SEED) -> np.ndarray:
    """Rows of ``x`` (one per tick) as decisions meet them: at uniformly random times up to
    ``until_ns``, for a random instrument, the row its last tick left in the store.  Ticks
    cluster in bursts (ten times the rate), so the per-tick rows over-represent bursts; the
    drift reference must describe what serving sees, or every calm minute would look like drift."""
    rng = np.random.default_rng(seed)
    ts, sym = cols["ts_ns"], cols["symbol"]
    at = rng.uniform(float(ts[0]) + 30 * 1e9, float(until_ns), n).astype(np.int64)  # 30 s of warm-up
    symbols = np.unique(sym)
    pick = rng.integers(len(symbols), size=n)
    rows = []
    for i, s in enumerate(symbols):
        idx = np.flatnonzero(sym == s)
        j = np.searchsorted(ts[idx], at[pick == i], side="right") - 1
        rows.append(idx[j[j >= 0]])
    return x[np.concatenate(rows)]


def write_reference(service_dir: Path, x: np.ndarray, names: list[str], log: Any = print) -> Path:
    """The drift reference of the feature rows ``x`` (columns ``names``) and the serving
    primary model's answers on them, saved at the spec's ``[drift] reference`` path."""
    from tailguard.observe.reference_data import build_service_reference
    from tailguard.service import load_service

    svc = load_service(service_dir, freeze_gc=False)
    path = build_service_reference(svc, x, names).save(service_dir / svc.spec.drift.reference)
    log(f"  drift reference: {len(x)} decision-time rows -> {path.relative_to(service_dir)}")
    return path


def train(service_dir: Path = HERE, *, log: Any = print) -> dict[str, Any]:
    """Generate ticks, build the training set by replay, train, export; returns metrics."""
    from tailguard.models.export import export_lightgbm

    t0 = time.perf_counter()
    cols = generate_ticks(TRAIN_SECONDS, seed=SEED)
    x_all, names = build_matrix(service_dir, cols)
    y = future_up(cols)
    keep = y >= 0
    x, y, ts = x_all[keep], y[keep], cols["ts_ns"][keep]
    split = ts[0] + int(0.8 * (ts[-1] - ts[0]))
    tr, va = ts <= split, ts > split
    log(f"training set: {len(y)} ticks replayed through the serving transforms "
        f"({time.perf_counter() - t0:.1f}s), {y.mean():.1%} up")
    spec = load_spec(service_dir)
    live = {n: v.version for n, v in compile_views(spec.feature_views, str(service_dir)).items()}
    metrics: dict[str, Any] = {}
    root = service_dir / "models"
    for name, inputs, rounds, leaves, lr, min_leaf in (
        ("alpha", PRIMARY_INPUTS, 200, 15, 0.03, 1000),
        ("alpha_fast", FAST_INPUTS, 30, 8, 0.1, 500),
    ):
        idx = [names.index(c) for c in inputs]
        booster = _fit(x[tr][:, idx], y[tr], rounds, leaves, lr, min_leaf)
        score = booster.predict(x[va][:, idx])
        m_auc = auc(y[va], score)
        versions = list_versions(root, name)
        version = str(int(versions[-1]) + 1) if versions and versions[-1].isdigit() else "1"
        export_lightgbm(
            booster,
            root,
            name,
            version,
            inputs=inputs,
            outputs=("p_up",),
            feature_versions={v: live[v] for v in sorted({c.split(".")[0] for c in inputs})},
            training={
                "data": f"generate_ticks(seconds={TRAIN_SECONDS}, seed={SEED})",
                "label": "mid up after 2s",
                "rows_train": int(tr.sum()),
                "rows_valid": int(va.sum()),
                "valid_auc": round(m_auc, 4),
                "trees": rounds,
                "leaves": leaves,
            },
        )
        metrics[name] = {"version": version, "valid_auc": round(m_auc, 4)}
        log(f"  {name} v{version}: {rounds} trees x {leaves} leaves on {len(inputs)} features, "
            f"validation AUC {m_auc:.3f}")
    write_reference(service_dir, decision_rows(cols, x_all, int(split)), names, log)
    log(f"trained in {time.perf_counter() - t0:.1f}s")
    return metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="retrain even if models are up to date")
    args = ap.parse_args()
    if not args.force and up_to_date(HERE):
        print("models are up to date (use --force to retrain)")
        return
    train(HERE)


if __name__ == "__main__":
    main()
