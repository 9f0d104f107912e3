"""tailguard: deadline-aware online inference — features, models and a fallback ladder on
one measured decision path.

    import tailguard
    svc = tailguard.load_service("examples/trading")
    d = svc.engine.predict("AAPL", {"bid": 99.99, "ask": 100.01, "bid_size": 300, "ask_size": 100})
    d.output("p_up"), d.rung, d.model_version, d.timings_ns

The public surface is what ``__all__`` lists; modules whose names start with ``_`` and
names not listed here may change without notice.
"""

from tailguard.clock import Clock, MonotonicClock
from tailguard.decision import STAGES, BatchDecision, Decision, Flag
from tailguard.engine import DecisionHook, Engine
from tailguard.errors import (
    BudgetExhausted,
    FeatureError,
    FeatureVersionMismatch,
    ModelError,
    ModelLoadError,
    ModelNotFound,
    SpecError,
    TailguardError,
    UnknownPriority,
    ValidationError,
)
from tailguard.features.store import InMemoryOnlineStore
from tailguard.features.stream import StreamProcessor
from tailguard.features.transforms import StreamTransform
from tailguard.models.onnx import OnnxRuntime
from tailguard.models.runtime import Runtime
from tailguard.models.trees import TreesRuntime
from tailguard.observe.latency import LatencyRecorder
from tailguard.service import Service, load_service, tune_gc
from tailguard.spec import ServiceSpec, load_spec

__version__ = "0.1.0"

__all__ = [
    "BatchDecision",
    "BudgetExhausted",
    "Clock",
    "Decision",
    "DecisionHook",
    "Engine",
    "FeatureError",
    "FeatureVersionMismatch",
    "Flag",
    "InMemoryOnlineStore",
    "LatencyRecorder",
    "ModelError",
    "ModelLoadError",
    "ModelNotFound",
    "MonotonicClock",
    "OnnxRuntime",
    "Runtime",
    "STAGES",
    "Service",
    "ServiceSpec",
    "SpecError",
    "StreamProcessor",
    "StreamTransform",
    "TailguardError",
    "TreesRuntime",
    "UnknownPriority",
    "ValidationError",
    "load_service",
    "load_spec",
    "tune_gc",
]
