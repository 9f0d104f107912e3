"""Train the gaming service's cheat models from generated play (about 20 s on 2 cores).

The training set is built by replaying the telemetry through the *serving* code path: the
same stream transforms and online store, and the engine's own feature assembler filling
the wide float32 rows.  A row is taken at each match end for each of its ten players, after
every event up to that moment and before anything later (the reports filed about that
match arrive after it), with the match's context.  The label is whether the player cheats.
Players are split 80/20 (by id) between training and validation, so the validation AUC is
measured on players the model has never seen.

* ``cheat``: 150 trees (15 leaves) over every column (the primary rung);
* ``cheat_fast``: 30 trees (8 leaves) over six columns (the fast rung).

Each is exported as a repository version (ONNX + compiled trees + manifest pinning the live
feature view versions), and the drift reference is written from the validation rows.
Run: ``python examples/gaming/train.py [--force]``.
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
from tailguard.features.view import compile_views  # noqa: E402
from tailguard.models.repository import list_versions  # noqa: E402
from tailguard.observe.quality import auc  # noqa: E402
from tailguard.spec import load_spec  # noqa: E402

WORLD_SEED = 1
TRAIN_SEED = 11
TRAIN_MATCHES = 2000
MODELS = ("cheat", "cheat_fast")
FAST_INPUTS = ("combat.reaction_std", "combat.accuracy_ewm", "combat.headshot_rate",
               "inputs.aim_snap_ewm", "reports.reports_decayed", "match.kd")
#: name, inputs (None: every column), trees, leaves, learning rate, min rows per leaf
MODEL_PARAMS: tuple[tuple[str, tuple[str, ...] | None, int, int, float, int], ...] = (
    ("cheat", None, 150, 15, 0.05, 50),
    ("cheat_fast", FAST_INPUTS, 30, 8, 0.15, 50),
)


class Replay:
    """A fresh store and stream processor over the service's compiled views, with the
    engine's assembler on top: the serving feature path, driven by recorded events."""

    def __init__(self, service_dir: Path) -> None:
        spec = load_spec(service_dir)
        self.views = compile_views(spec.feature_views, str(service_dir))
        self.clock = MonotonicClock()
        self.store = InMemoryOnlineStore(self.views, spec.entities, clock=self.clock, capacity=2048)
        self.stream = StreamProcessor(self.views, self.store, entities=spec.entities)
        self.assembler = FeatureAssembler(self.views, [v.name for v in spec.feature_views], self.store)
        self.columns = self.assembler.columns

    def rows(self, players: list[str], ping_ms: np.ndarray, kills: np.ndarray, deaths: np.ndarray,
             out: np.ndarray) -> None:
        """Fill ``out`` (len(players) x width) as the engine would for this lobby now."""
        rows = self.store.rows("player", players).reshape(-1, 1)
        ctx = {"ping_ms": ping_ms, "match_kills": kills, "match_deaths": deaths}
        self.assembler.fill_many(rows, ctx, out, self.clock.now_ns())


def build_matrix(service_dir: Path, history: History) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Replay ``history``; one row per decision (match end x player), point in time.
    Returns rows, the decisions' player indices and the column names."""
    rp = Replay(service_dir)
    d = history.decisions
    names = history.world.players
    x = np.empty((len(d.ts_ns), len(rp.columns)), dtype=np.float32)
    evs = history.events()
    process = rp.stream.process
    j = 0
    # Decisions of one match share a time: fill them together, as a lobby.
    cuts = np.flatnonzero(np.diff(d.ts_ns)) + 1
    for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), len(d.ts_ns)], strict=True):
        t = int(d.ts_ns[lo])
        while j < len(evs) and evs[j]["ts_ns"] <= t:
            process(evs[j])
            j += 1
        rp.rows([names[p] for p in d.player[lo:hi].tolist()], d.ping_ms[lo:hi], d.kills[lo:hi],
                d.deaths[lo:hi], x[lo:hi])
    return x, d.player.copy(), rp.columns


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
    matches: int = TRAIN_MATCHES,
    scale: float = 1.0,
    compile_trees: bool = True,
    reference: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Generate play, build the training set by replay, train, export; returns metrics.
    ``scale`` shrinks the tree counts (tests train tiny models with it)."""
    from tailguard.models.export import export_lightgbm

    t0 = time.perf_counter()
    world = make_world(seed=WORLD_SEED)
    history = generate(world, matches, seed=TRAIN_SEED)
    x, player, names = build_matrix(service_dir, history)
    y = world.cheater[player].astype(np.int8)
    va = player % 5 == 0
    tr = ~va
    log(f"training set: {len(y)} match-end decisions of {matches} matches replayed through the serving "
        f"transforms ({time.perf_counter() - t0:.1f}s), {y.mean():.1%} by cheaters")
    live = live_versions(service_dir)
    metrics: dict[str, Any] = {
        "rows": len(y),
        # A trivial baseline: the kills per death of the match just played.
        "baseline_match_kd_auc": round(auc(y[va], x[va][:, names.index("match.kd")]), 4),
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
            outputs=("p_cheat",),
            feature_versions={v: live[v] for v in sorted({c.split(".")[0] for c in cols})},
            training={
                "data": f"events.generate(make_world(seed={WORLD_SEED}), {matches}, seed={TRAIN_SEED})",
                "label": "player cheats",
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
            f"validation AUC {m_auc:.3f} (players not trained on)")
    log(f"  baseline (match kills per death only): validation AUC {metrics['baseline_match_kd_auc']:.3f}")
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
