"""Train the recsys service's rankers from generated traffic (about half a minute on 2 cores).

The training set is built by replaying impressions and clicks through the *serving* code
path: the same stream transforms, the same online store, and the engine's own feature
assembler filling the wide float32 rows.  Each session's rows are taken just before its
impressions are applied, so a row holds what serving would have known when it ranked that
slate (point in time: the session's own clicks come later).  The label is the click.

* ``ranker``: 200 trees (31 leaves) over every column (the primary rung);
* ``ranker_fast``: 40 trees (8 leaves) over the item category, the user's category
  affinities and the item's click rate (the fast rung).

Each is exported as a repository version (ONNX + compiled trees + manifest pinning the live
feature view versions), and the drift reference is written from the training rows.
Run: ``python examples/recsys/train.py [--force]``.
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

from events import History, generate, make_world  # noqa: E402

from tailguard.clock import MonotonicClock  # noqa: E402
from tailguard.features.assembler import FeatureAssembler  # noqa: E402
from tailguard.features.store import InMemoryOnlineStore  # noqa: E402
from tailguard.features.stream import StreamProcessor  # noqa: E402
from tailguard.features.transforms import load_module  # noqa: E402
from tailguard.features.view import compile_views  # noqa: E402
from tailguard.models.repository import list_versions  # noqa: E402
from tailguard.observe.quality import auc  # noqa: E402
from tailguard.spec import load_spec  # noqa: E402

WORLD_SEED = 1
TRAIN_SEED = 11
TRAIN_SESSIONS = 24_000
MODELS = ("ranker", "ranker_fast")
FAST_INPUTS = ("item_catalog.category", "item_stats.ctr", "user_profile.ctr",
               *(f"user_profile.aff_{c}" for c in range(8)))
#: name, inputs (None: every column), trees, leaves, learning rate, min rows per leaf
MODEL_PARAMS: tuple[tuple[str, tuple[str, ...] | None, int, int, float, int], ...] = (
    ("ranker", None, 200, 31, 0.05, 200),
    ("ranker_fast", FAST_INPUTS, 40, 8, 0.15, 200),
)


class Replay:
    """A fresh store and stream processor over the service's compiled views, with the
    engine's assembler on top: the serving feature path, driven by recorded events."""

    def __init__(self, service_dir: Path) -> None:
        spec = load_spec(service_dir)
        self.views = compile_views(spec.feature_views, str(service_dir))
        self.clock = MonotonicClock()
        self.store = InMemoryOnlineStore(self.views, spec.entities, clock=self.clock, capacity=4096)
        self.stream = StreamProcessor(self.views, self.store, entities=spec.entities)
        # Every view, in spec order: the layout the primary model reads at serving time.
        self.assembler = FeatureAssembler(self.views, [v.name for v in spec.feature_views], self.store)
        self.columns = self.assembler.columns
        self.features = load_module(str(service_dir), "features")

    def write_catalog(self, history: History) -> None:
        """The batch view: every item's category."""
        self.features.write_catalog(self.store, history.world.items, history.world.category)

    def rows(self, users: list[str], items: list[str], hour: float, mobile: float,
             out: np.ndarray) -> None:
        """Fill ``out`` (len(items) x width) as the engine would for this request now."""
        keys = {"user": users, "item": items}
        rows = np.stack([self.store.rows(e, keys[e]) for e in self.assembler.entities], axis=1)
        self.assembler.fill_many(rows, {"hour": hour, "mobile": mobile}, out, self.clock.now_ns())


def build_matrix(
    service_dir: Path, history: History
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Replay ``history``; one feature row per impression, taken before its session's
    impressions are applied.  Returns rows, labels, session times and column names."""
    rp = Replay(service_dir)
    rp.write_catalog(history)
    w = history.world
    n_s, k = history.slate.shape
    x = np.empty((n_s * k, len(rp.columns)), dtype=np.float32)
    process = rp.stream.process
    for ev in history.events():
        if ev["click"] == 0.0 and ev["slot"] == 0:
            s = ev["session"]
            rp.rows([ev["user"]] * k, [w.items[i] for i in history.slate[s]],
                    float(history.hour[s]), float(history.mobile[s]), x[s * k:(s + 1) * k])
        process(ev)
    y = history.clicked.reshape(-1).astype(np.int8)
    ts = np.repeat(history.ts_ns, k)
    return x, y, ts, rp.columns


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
        "seed": TRAIN_SEED,
        "deterministic": True,
        "num_threads": 1,  # 2 threads on a busy 2-core machine ran 6x slower (OpenMP spinning)
        "verbose": -1,
    }
    return lgb.train(params, lgb.Dataset(x, y), num_boost_round=rounds)


def live_versions(service_dir: Path) -> dict[str, str]:
    """The live version of every feature view of the service directory."""
    spec = load_spec(service_dir)
    return {n: v.version for n, v in compile_views(spec.feature_views, str(service_dir)).items()}


def up_to_date(service_dir: Path) -> bool:
    """True when both models exist and pin the live feature view versions (and the drift
    reference, when the spec enables drift, describes the latest primary)."""
    from tailguard.models.manifest import read_manifest
    from tailguard.observe.reference import DriftReferenceError, Reference

    live = live_versions(service_dir)
    root = service_dir / "models"
    for name in MODELS:
        versions = list_versions(root, name)
        if not versions:
            return False
        m = read_manifest(root / name / versions[-1], verify=False)
        if any(live.get(v) != ver for v, ver in m.feature_versions.items()):
            return False
    spec = load_spec(service_dir)
    if not spec.drift.enabled:
        return True
    try:
        meta = Reference.load(service_dir / spec.drift.reference).meta
    except DriftReferenceError:
        return False
    return bool(meta.get("model") == f"{MODELS[0]}/{list_versions(root, MODELS[0])[-1]}")


def train(
    service_dir: Path = HERE,
    *,
    sessions: int = TRAIN_SESSIONS,
    scale: float = 1.0,
    compile_trees: bool = True,
    reference: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Generate traffic, build the training set by replay, train, export; returns metrics.
    ``scale`` shrinks the tree counts (tests train tiny models with it)."""
    from tailguard.models.export import export_lightgbm

    t0 = time.perf_counter()
    world = make_world(seed=WORLD_SEED)
    history = generate(world, sessions, seed=TRAIN_SEED)
    x, y, ts, names = build_matrix(service_dir, history)
    split = ts[0] + int(0.8 * (ts[-1] - ts[0]))
    tr, va = ts <= split, ts > split
    log(f"training set: {len(y)} impressions of {sessions} sessions replayed through the serving "
        f"transforms ({time.perf_counter() - t0:.1f}s), {y.mean():.1%} clicked")
    live = live_versions(service_dir)
    metrics: dict[str, Any] = {
        "rows": len(y),
        # A trivial baseline: rank by the item's click rate alone (no personalisation).
        "baseline_item_ctr_auc": round(auc(y[va], x[va][:, names.index("item_stats.ctr")]), 4),
    }
    root = service_dir / "models"
    for name, inputs, rounds, leaves, lr, min_leaf in MODEL_PARAMS:
        cols = names if inputs is None else inputs
        rounds = max(5, int(rounds * scale))
        idx = [names.index(c) for c in cols]
        booster = _fit(x[tr][:, idx], y[tr], rounds, leaves, lr, min_leaf)
        m_auc = auc(y[va], booster.predict(x[va][:, idx]))
        versions = list_versions(root, name)
        version = str(int(versions[-1]) + 1) if versions and versions[-1].isdigit() else "1"
        export_lightgbm(
            booster,
            root,
            name,
            version,
            inputs=cols,
            outputs=("p_click",),
            feature_versions={v: live[v] for v in sorted({c.split(".")[0] for c in cols})},
            training={
                "data": f"events.generate(make_world(seed={WORLD_SEED}), {sessions}, seed={TRAIN_SEED})",
                "label": "impression clicked",
                "rows_train": int(tr.sum()),
                "rows_valid": int(va.sum()),
                "valid_auc": round(m_auc, 4),
                "trees": rounds,
                "leaves": leaves,
            },
            compile_trees=compile_trees,
        )
        metrics[name] = {"version": version, "valid_auc": round(m_auc, 4)}
        log(f"  {name} v{version}: {rounds} trees x {leaves} leaves on {len(cols)} features, "
            f"validation AUC {m_auc:.3f}")
    log(f"  baseline (item click rate only): validation AUC {metrics['baseline_item_ctr_auc']:.3f}")
    spec = load_spec(service_dir)
    if reference and spec.drift.enabled:
        from tailguard.observe.reference_data import build_service_reference
        from tailguard.service import load_service

        svc = load_service(service_dir, freeze_gc=False)
        path = build_service_reference(svc, x[va], names).save(service_dir / spec.drift.reference)
        log(f"  drift reference: {int(va.sum())} validation rows -> {path.relative_to(service_dir)}")
    log(f"trained in {time.perf_counter() - t0:.1f}s")
    return metrics


def main() -> None:
    """Command line: train unless the models are up to date."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="retrain even if models are up to date")
    args = ap.parse_args()
    if not args.force and up_to_date(HERE):
        print("models are up to date (use --force to retrain)")
        return
    train(HERE)


if __name__ == "__main__":
    main()
