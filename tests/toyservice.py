"""A small service directory for tests: spec, transform module and two LightGBM models.

``build_service(dir)`` writes ``service.toml`` and ``toyfeatures.py``, then trains two
small boosters on random data and exports them (ONNX + compiled trees) into
``dir/models`` pinned to the live feature view versions.  The session fixture in
``conftest.py`` builds it once; tests that change files work on a copy.

The service: entity ``item`` (str keys); stream view ``stats`` (fields with non-zero
defaults, so served defaults are recognisable); request view ``order`` computed from
the ``price`` and ``size`` context fields; models ``primary`` (all five columns) and
``fast`` (two columns, in a different order than the wide vector); ladder primary ->
fast -> last_good (max_age 1 s) -> default (p = 0.25).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SECOND = 1_000_000_000
STATS_FIELDS = ("price_ewm", "count_10s", "last_size")
STATS_DEFAULTS = (0.5, -1.0, 2.0)
PRIMARY_INPUTS = ("stats.price_ewm", "stats.count_10s", "stats.last_size", "order.notional", "order.ratio")
FAST_INPUTS = ("order.ratio", "stats.price_ewm")
OUTPUTS = ("p",)
CTX = {"price": 104.5, "size": 3.0}
BUDGET_NS = {"critical": 500_000, "normal": 2_000_000, "bulk": 20_000_000}
TTL_NS = 10 * SECOND
MAX_AGE_NS = 1 * SECOND
DEFAULT_P = 0.25

MODULE_SOURCE = '''"""Transforms of the toy test service."""

from tailguard.features.aggregates import Ewma, WindowCount

FIELDS = ("price_ewm", "count_10s", "last_size")
SECOND = 1_000_000_000


class ItemState:
    __slots__ = ("count", "ewm", "out")

    def __init__(self):
        self.ewm = Ewma(0.5)
        self.count = WindowCount(10 * SECOND)
        self.out = [0.0, 0.0, 0.0]


class ItemFeatures:
    fields = FIELDS

    def new_state(self):
        return ItemState()

    def update(self, s, ev):
        s.out[0] = s.ewm.update(float(ev["price"]))
        s.out[1] = float(s.count.update(int(ev["ts_ns"])))
        s.out[2] = float(ev["size"])

    def values(self, s):
        return s.out


def order_features(price, size):
    return price * size, size / (price + 1.0)
'''

LADDER = """
[[ladder]]
name = "primary"
kind = "model"
model = "primary"

[[ladder]]
name = "fast"
kind = "model"
model = "fast"

[[ladder]]
name = "last_good"
kind = "last_good"
max_age = "1s"

[[ladder]]
name = "default"
kind = "default"
outputs = { p = 0.25 }
"""

LADDER_WITHOUT_DEFAULT = LADDER.split("[[ladder]]\nname = \"default\"")[0]


def render_spec(
    *,
    ladder: str = LADDER,
    primary_runtime: str = "trees",
    fast_runtime: str = "trees",
    primary_isolation: str = "inline",
    stats_ttl: str = "10s",
) -> str:
    """The toy ``service.toml``; the keyword arguments vary what tests need to vary."""
    return f"""
name = "toy"
description = "A tiny service for tests."
default_priority = "normal"

[[entities]]
name = "item"
key_dtype = "str"

[[feature_views]]
name = "stats"
entity = "item"
source = "stream"
ttl = "{stats_ttl}"
transform = "toyfeatures:ItemFeatures"
fields = [
  {{ name = "price_ewm", dtype = "float32", default = 0.5 }},
  {{ name = "count_10s", dtype = "float32", default = -1.0 }},
  {{ name = "last_size", dtype = "float32", default = 2.0 }},
]

[[feature_views]]
name = "order"
source = "request"
transform = "toyfeatures:order_features"
inputs = ["price", "size"]
fields = [{{ name = "notional" }}, {{ name = "ratio" }}]

[[models]]
name = "primary"
repository = "models"
runtime = "{primary_runtime}"
isolation = "{primary_isolation}"
warmup = 2

[[models]]
name = "fast"
repository = "models"
runtime = "{fast_runtime}"
warmup = 2

[[priorities]]
name = "critical"
level = 1
budget = "500us"

[[priorities]]
name = "normal"
level = 2
budget = "2ms"

[[priorities]]
name = "bulk"
level = 3
budget = "20ms"
{ladder}
"""


def write_service(
    directory: Path, *, spec_text: str | None = None, module_source: str = MODULE_SOURCE
) -> None:
    """Write (or overwrite) the spec and the transform module of a toy service directory."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "service.toml").write_text(render_spec() if spec_text is None else spec_text)
    (directory / "toyfeatures.py").write_text(module_source)


def order_features(price: Any, size: Any) -> tuple[Any, Any]:
    """The request transform of the toy service (same formula as in ``MODULE_SOURCE``)."""
    return price * size, size / (price + 1.0)


def training_matrix(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random feature rows in the primary model's column order (10% missing) and labels."""
    rng = np.random.default_rng(seed)
    price = rng.uniform(90.0, 110.0, n)
    count = rng.integers(0, 20, n).astype(np.float64)
    size = rng.uniform(1.0, 10.0, n)
    notional, ratio = order_features(rng.uniform(90.0, 110.0, n), size)
    x = np.column_stack([price, count, size, notional, ratio]).astype(np.float32)
    logit = (price - 100.0) / 3.0 + (size - 5.5) / 2.0 + rng.normal(0.0, 1.0, n)
    y = (logit > 0).astype(np.int32)
    x[rng.random(x.shape) < 0.1] = np.nan
    return x, y


def train_booster(x: np.ndarray, y: np.ndarray, rounds: int, leaves: int) -> Any:
    import lightgbm as lgb

    params = {
        "objective": "binary",
        "num_leaves": leaves,
        "min_data_in_leaf": 10,
        "learning_rate": 0.2,
        "num_threads": 1,
        "deterministic": True,
        "seed": 7,
        "verbose": -1,
    }
    return lgb.train(params, lgb.Dataset(x, y), num_boost_round=rounds)


def live_versions(directory: Path) -> dict[str, str]:
    from tailguard.features.view import compile_views
    from tailguard.spec import load_spec

    spec = load_spec(directory)
    return {n: v.version for n, v in compile_views(spec.feature_views, str(directory)).items()}


def train_models(directory: Path) -> None:
    """Train and export ``primary`` and ``fast`` (version 1) into ``directory/models``."""
    from tailguard.models.export import export_lightgbm

    live = live_versions(directory)
    x, y = training_matrix(600, seed=3)
    for name, inputs, rounds, leaves in (("primary", PRIMARY_INPUTS, 20, 8), ("fast", FAST_INPUTS, 5, 4)):
        idx = [PRIMARY_INPUTS.index(c) for c in inputs]
        booster = train_booster(x[:, idx], y, rounds, leaves)
        export_lightgbm(
            booster,
            directory / "models",
            name,
            "1",
            inputs=inputs,
            outputs=OUTPUTS,
            feature_versions={v: live[v] for v in sorted({c.split(".")[0] for c in inputs})},
        )


def build_service(directory: Path) -> Path:
    write_service(directory)
    train_models(directory)
    return directory


_EVENT_NS = itertools.count(SECOND, 1_000_000)


def feed(service: Any, key: str, prices: Sequence[float] = (105.0, 106.0), *, size: float = 4.0) -> None:
    """Apply one tick per price for ``key`` through the service's stream processor.

    Event times come from a process-wide increasing counter (1 ms apart), so no event is
    ever late; the store's write time is the service clock's, which feeding does not move.
    """
    for price in prices:
        service.stream.apply("item", key, {"ts_ns": next(_EVENT_NS), "price": price, "size": size})


def primary_row(stats: Sequence[float], ctx: dict[str, float]) -> np.ndarray:
    """The primary model's input row (float32, shape (1, 5)) for given stats and context."""
    notional, ratio = order_features(ctx["price"], ctx["size"])
    return np.array([[*stats, notional, ratio]], dtype=np.float32)
