"""benchmarks/serve.py's setup: every contender gets the same ONNX model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from tailguard.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]


def serve_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmarks_serve", ROOT / "benchmarks" / "serve.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmarks_serve"] = module
    spec.loader.exec_module(module)
    return module


def test_the_service_copy_serves_every_model_from_onnx(tmp_path: Path) -> None:
    svc = serve_benchmark().onnx_service(tmp_path)
    spec = load_spec(svc)
    assert spec.models and {m.runtime for m in spec.models} == {"onnx"}
    assert (svc / "features.py").is_file()


def test_quotes_are_plausible_and_reproducible() -> None:
    mod = serve_benchmark()
    keys, ctx = mod.quotes(7)
    assert len(keys) == len(ctx) == mod.N_KEYS and len(set(keys)) == len(keys)
    assert all(0 < q["bid"] < q["ask"] and q["bid_size"] > 0 and q["ask_size"] > 0 for q in ctx)
    assert mod.quotes(7) == (keys, ctx)
