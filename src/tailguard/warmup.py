"""Exercising an engine before traffic: warm-up and calibration.

First calls pay for lazy allocations — buffers, views, ONNX Runtime's per-shape plans, I/O
bindings — that must not land on a real request, and a scheduler that learned its costs from
those first calls would believe them.  ``warm_up`` runs the whole decision path (load fails
here, with the service's error type, if a transform or model cannot run on declared defaults);
``calibrate`` times every model rung at every batch size a server may form.

Both use an entity key no store holds (declared defaults), a context of ones and the class
with the largest budget; side-path hooks are off while they run and every engine counter is
reset afterwards (the models' service-time estimates keep what they learned).  Owner: the
engine's thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tailguard.errors import FeatureError

if TYPE_CHECKING:
    from tailguard.engine import Engine

__all__ = ["calibrate", "dummy_inputs", "warm_up"]


def dummy_inputs(engine: Engine) -> tuple[Any, Callable[[int], Any], dict[str, float], str]:
    """An unknown entity key, a function making N of them (in the engine's key shape), a
    context of ones and the name of the class with the largest budget."""
    entities = engine.assembler.entities
    single = entities[0] if len(entities) == 1 else None
    dummy: dict[str, Any] = {}
    for e in entities:
        dummy[e] = "\0tailguard-warmup" if engine.store.entity_index(e).key_type is str else -(2**62)
    keys = dummy[single] if single is not None else (dummy or 0)

    def many_of(n: int) -> Any:
        if single is not None or not entities:
            return [keys] * n
        return {e: [k] * n for e, k in dummy.items()}

    ctx = dict.fromkeys(engine.assembler.context_fields, 1.0)
    priority = max(engine.priority_budgets_ns().items(), key=lambda kv: kv[1])[0]
    return keys, many_of, ctx, priority


@contextmanager
def _quiet(engine: Engine) -> Iterator[None]:
    """Hooks off while exercising the engine; counters reset afterwards."""
    hooks = engine.hooks
    engine.set_hooks(())
    try:
        yield
    finally:
        engine.set_hooks(hooks)
        engine.reset_statistics()


def warm_up(engine: Engine, iterations: int = 200, batch_sizes: tuple[int, ...] = (8, 64)) -> None:
    """``iterations`` single decisions, then ``iterations // 10`` batches of each size."""
    keys, many_of, ctx, priority = dummy_inputs(engine)
    with _quiet(engine):
        try:
            for _ in range(iterations):
                engine.predict(keys, ctx or None, priority=priority)
            for n in batch_sizes:
                many = many_of(n)
                for _ in range(max(iterations // 10, 1)):
                    engine.predict_batch(many, ctx or None, priority=priority)
        except Exception as exc:
            # A transform or model that fails on declared defaults and a context of ones
            # fails the load here, with the service's error type, not at the first request.
            raise FeatureError(f"the decision path failed during warm-up: {exc!r}") from exc


def calibrate(engine: Engine, batch_sizes: Sequence[int], repeats: int,
              observe: Callable[[int, int, int], None], singles_below: int = 0) -> None:
    """Time a call from every model rung at every batch size ``repeats`` times, reporting
    ``observe(rung, n, elapsed_ns)`` — how a scheduler learns whole-call costs before traffic.
    Each size runs once unrecorded first (a new shape's first call is not typical).  Sizes
    below ``singles_below`` are timed as that many ``predict`` calls, as a server runs them."""
    one, many_of, ctx, priority = dummy_inputs(engine)
    now = engine.clock.now_ns
    with _quiet(engine):
        for rung in engine.rungs:
            if rung.model is None:
                continue
            r = rung.index
            for n in batch_sizes:
                many = many_of(n)
                for i in range(repeats + 1):
                    t0 = now()
                    if n < singles_below:
                        for _ in range(n):
                            engine.predict(one, ctx or None, priority=priority, start_rung=r)
                    else:
                        engine.predict_batch(many, ctx or None, priority=priority, start_rung=r)
                    if i:
                        observe(r, n, now() - t0)
