"""The serving feature path of a service, without its models, for building training rows.

``FeatureReplay`` opens a service directory's compiled feature views with a fresh embedded
store and stream processor (the spec's ``[stream]`` policies included) and the engine's own
assembler over every view in spec order.  Training scripts replay recorded events through
``stream`` and take rows with ``assembler.fill_one/fill_many`` as they go, so each training
row is what serving would have computed at that moment, by the same code (point in time by
construction).  Owner: one thread, like the engine.
"""

from __future__ import annotations

from pathlib import Path

from tailguard.clock import Clock, MonotonicClock
from tailguard.features.assembler import FeatureAssembler
from tailguard.features.store import InMemoryOnlineStore
from tailguard.features.stream import StreamProcessor
from tailguard.features.view import compile_views
from tailguard.spec import load_spec

__all__ = ["FeatureReplay"]


class FeatureReplay:
    """A fresh store, stream processor and assembler over ``service_dir``'s views."""

    def __init__(self, service_dir: str | Path, *, capacity: int = 1024, clock: Clock | None = None) -> None:
        root = Path(service_dir)
        self.spec = spec = load_spec(root)
        self.views = compile_views(spec.feature_views, str(root))
        self.clock = clock or MonotonicClock()
        self.store = InMemoryOnlineStore(self.views, spec.entities, clock=self.clock, capacity=capacity)
        self.stream = StreamProcessor(self.views, self.store, spec.stream, entities=spec.entities,
                                      clock=self.clock)
        # Every view, in spec order: the layout the primary model reads at serving time.
        self.assembler = FeatureAssembler(self.views, [v.name for v in spec.feature_views], self.store)
        self.columns = self.assembler.columns
