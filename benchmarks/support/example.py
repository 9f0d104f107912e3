"""What the benchmarks share: the trading example's location, its modules and its models."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SERVICE_DIR = ROOT / "examples" / "trading"


def log(*parts: Any) -> None:
    """Progress on stderr (stdout is for the tables and the final JSON object)."""
    print(*parts, file=sys.stderr, flush=True)


def example_module(name: str) -> Any:
    """Import a module of the trading example (``ticks``, ``train``) by file name."""
    if str(SERVICE_DIR) not in sys.path:
        sys.path.insert(0, str(SERVICE_DIR))
    return importlib.import_module(name)


def ensure_models() -> None:
    """Train the example's models when they are missing or pin stale feature versions."""
    train = example_module("train")
    if not train.up_to_date(SERVICE_DIR):
        log("example models missing or outdated: training them (examples/trading/train.py)")
        train.train(SERVICE_DIR, log=log)
