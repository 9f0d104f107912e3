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
from tailguard.registry.catalog import live_feature_versions  # noqa: E402
from tailguard.spec import load_spec  # noqa: E402

PRIMARY_INPUTS = (
    "ticks.ret_1s", "ticks.ret_5s", "ticks.ret_30s", "ticks.vol_ewm_bps", "ticks.spread_ewm_bps",
    "ticks.imbalance_ewm", "ticks.trade_intensity", "ticks.flow_ewm",
    "quote.spread_bps", "quote.imbalance",
)
FAST_INPUTS = ("ticks.ret_5s", "ticks.imbalance_ewm", "ticks.flow_ewm", "quote.imbalance")
#: name, inputs, trees, leaves, learning rate, min rows per leaf
MODEL_PARAMS: tuple[tuple[str, tuple[str, ...], int, int, float, int], ...] = (
    ("alpha", PRIMARY_INPUTS, 200, 15, 0.03, 1000),
    ("alpha_fast", FAST_INPUTS, 30, 8, 0.1, 500),
)
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


def up_to_date(service_dir: Path) -> bool:
    """True when both models exist and pin the live feature view versions, and the drift
    reference describes the latest primary model on those versions."""
    from tailguard.models.training import models_current

    spec = load_spec(service_dir)
    return models_current(service_dir / "models", [p[0] for p in MODEL_PARAMS],
                          live_feature_versions(service_dir, spec), service_dir / spec.drift.reference)


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


def train(service_dir: Path = HERE, *, log: Any = print) -> dict[str, Any]:
    """Generate ticks, build the training set by replay, train, export; returns metrics."""
    from tailguard.models.training import TreeModel, train_and_export, write_service_reference

    t0 = time.perf_counter()
    cols = generate_ticks(TRAIN_SECONDS, seed=SEED)
    x_all, names = build_matrix(service_dir, cols)
    y = future_up(cols)
    keep = y >= 0
    x, y, ts = x_all[keep], y[keep], cols["ts_ns"][keep]
    split = ts[0] + int(0.8 * (ts[-1] - ts[0]))
    log(f"training set: {len(y)} ticks replayed through the serving transforms "
        f"({time.perf_counter() - t0:.1f}s), {y.mean():.1%} up")
    trained = train_and_export(
        x, y, names, [TreeModel(*p) for p in MODEL_PARAMS], train=ts <= split, valid=ts > split,
        root=service_dir / "models", outputs=("p_up",), live=live_feature_versions(service_dir),
        training={"data": f"generate_ticks(seconds={TRAIN_SECONDS}, seed={SEED})",
                  "label": "mid up after 2s"},
        seed=SEED, num_threads=2, log=log,
    )
    # The drift reference describes what serving sees: the rows decisions meet (not per tick).
    rows = decision_rows(cols, x_all, int(split))
    path = write_service_reference(service_dir, rows, names)
    if path is not None:
        log(f"  drift reference: {len(rows)} decision-time rows -> {path.relative_to(service_dir)}")
    log(f"trained in {time.perf_counter() - t0:.1f}s")
    return {name: t.metrics() for name, t in trained.items()}


def main() -> None:
    """Command line: train unless the models are up to date (``--force``: retrain anyway)."""
    from tailguard.models.training import train_command

    train_command(HERE, up_to_date, train, __doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()
