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
from tailguard.observe.quality import auc  # noqa: E402
from tailguard.registry.catalog import live_feature_versions  # noqa: E402
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


class Replay(FeatureReplay):
    """The serving feature path (``tailguard.features.replaypath``), driven by recorded events."""

    def __init__(self, service_dir: Path) -> None:
        super().__init__(service_dir, capacity=2048)

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
    matches: int = TRAIN_MATCHES,
    scale: float = 1.0,
    compile_trees: bool = True,
    reference: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Generate play, build the training set by replay, train, export; returns metrics.
    ``scale`` shrinks the tree counts (tests train tiny models with it)."""
    from tailguard.models.training import TreeModel, train_and_export, write_service_reference

    t0 = time.perf_counter()
    world = make_world(seed=WORLD_SEED)
    history = generate(world, matches, seed=TRAIN_SEED)
    x, player, names = build_matrix(service_dir, history)
    y = world.cheater[player].astype(np.int8)
    va = player % 5 == 0
    log(f"training set: {len(y)} match-end decisions of {matches} matches replayed through the serving "
        f"transforms ({time.perf_counter() - t0:.1f}s), {y.mean():.1%} by cheaters")
    metrics: dict[str, Any] = {
        "rows": len(y),
        # A trivial baseline: the kills per death of the match just played.
        "baseline_match_kd_auc": round(auc(y[va], x[va][:, names.index("match.kd")]), 4),
    }
    log("  validation: players not trained on")
    trained = train_and_export(
        x, y, names, [TreeModel(*p) for p in MODEL_PARAMS], train=~va, valid=va,
        root=service_dir / "models", outputs=("p_cheat",), live=live_feature_versions(service_dir),
        training={"data": f"events.generate(make_world(seed={WORLD_SEED}), {matches}, seed={TRAIN_SEED})",
                  "label": "player cheats"},
        seed=TRAIN_SEED, scale=scale, compile_trees=compile_trees, log=log,
    )
    metrics.update({name: t.metrics() for name, t in trained.items()})
    log(f"  baseline (match kills per death only): validation AUC {metrics['baseline_match_kd_auc']:.3f}")
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
