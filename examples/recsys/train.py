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

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from events import History, generate, make_world  # noqa: E402

from tailguard.features.replaypath import FeatureReplay  # noqa: E402
from tailguard.features.transforms import load_module  # noqa: E402
from tailguard.observe.quality import auc  # noqa: E402
from tailguard.registry.catalog import live_feature_versions  # noqa: E402
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


class Replay(FeatureReplay):
    """The serving feature path (``tailguard.features.replaypath``), driven by recorded events."""

    def __init__(self, service_dir: Path) -> None:
        super().__init__(service_dir, capacity=4096)
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


def up_to_date(service_dir: Path) -> bool:
    """True when both models exist and pin the live feature view versions (and the drift
    reference, when the spec enables drift, describes the latest primary)."""
    from tailguard.models.training import models_current

    drift = load_spec(service_dir).drift
    return models_current(service_dir / "models", MODELS, live_feature_versions(service_dir),
                          service_dir / drift.reference if drift.enabled else None)


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
    from tailguard.models.training import TreeModel, train_and_export, write_service_reference

    t0 = time.perf_counter()
    world = make_world(seed=WORLD_SEED)
    history = generate(world, sessions, seed=TRAIN_SEED)
    x, y, ts, names = build_matrix(service_dir, history)
    split = ts[0] + int(0.8 * (ts[-1] - ts[0]))
    tr, va = ts <= split, ts > split
    log(f"training set: {len(y)} impressions of {sessions} sessions replayed through the serving "
        f"transforms ({time.perf_counter() - t0:.1f}s), {y.mean():.1%} clicked")
    metrics: dict[str, Any] = {
        "rows": len(y),
        # A trivial baseline: rank by the item's click rate alone (no personalisation).
        "baseline_item_ctr_auc": round(auc(y[va], x[va][:, names.index("item_stats.ctr")]), 4),
    }
    trained = train_and_export(
        x, y, names, [TreeModel(*p) for p in MODEL_PARAMS], train=tr, valid=va,
        root=service_dir / "models", outputs=("p_click",), live=live_feature_versions(service_dir),
        training={"data": f"events.generate(make_world(seed={WORLD_SEED}), {sessions}, seed={TRAIN_SEED})",
                  "label": "impression clicked"},
        seed=TRAIN_SEED, scale=scale, compile_trees=compile_trees, log=log,
    )
    metrics.update({name: t.metrics() for name, t in trained.items()})
    log(f"  baseline (item click rate only): validation AUC {metrics['baseline_item_ctr_auc']:.3f}")
    path = write_service_reference(service_dir, x[va], names) if reference else None
    if path is not None:
        log(f"  drift reference: {int(va.sum())} validation rows -> {path.relative_to(service_dir)}")
    log(f"trained in {time.perf_counter() - t0:.1f}s")
    return metrics


def main() -> None:
    """Command line: train unless the models are up to date (``--force``: retrain anyway)."""
    from tailguard.models.training import train_command

    train_command(HERE, up_to_date, train, __doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()
