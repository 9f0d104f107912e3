"""The fallback ladder: the ordered answers a decision may fall back to, compiled once.

v1 rungs: model rungs (primary, fast, ...), the last good answer for the entity, and the
declared default.  A model rung is skipped when its expected service time (learned per model
and batch size) no longer fits in what is left of the budget, and passed over when it raises
or returns non-finite outputs.  ``last_good`` serves the entity's most recent model answer if
it is younger than ``max_age``; ``default`` always answers.  The engine walks the rungs; this
module holds their compiled form and the per-entity last-good memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tailguard.clock import Clock
from tailguard.errors import ModelError, SpecError
from tailguard.models.repository import LoadedModel
from tailguard.resilience.breaker import BreakerConfig, CircuitBreaker
from tailguard.resilience.isolation import IsolatedRuntime
from tailguard.spec import RungKind, RungSpec

__all__ = ["LastGood", "Rung", "arm_breakers", "compile_ladder"]


class Rung:
    """One compiled rung.  ``cols`` maps the wide feature vector to a model's inputs (None:
    the model reads the wide vector as is)."""

    __slots__ = (
        "breaker", "breaker_failures", "breaker_open_s", "cols", "default", "index", "isolated", "kind",
        "label", "max_age_ns", "model", "name", "x1", "xbuf",
    )

    def __init__(self, spec: RungSpec, index: int) -> None:
        self.name = spec.name
        self.index = index
        self.kind = spec.kind
        self.model: LoadedModel | None = None
        self.label = ""
        self.isolated: IsolatedRuntime | None = None
        self.cols: np.ndarray | None = None
        self.xbuf = np.zeros((0, 0), dtype=np.float32)
        self.x1 = self.xbuf
        self.max_age_ns = None if spec.max_age is None else round(spec.max_age * 1e9)
        self.default = np.zeros(0)
        #: A model rung's circuit breaker (made by the engine that serves it; None: none).
        self.breaker: CircuitBreaker | None = None
        self.breaker_failures = spec.breaker_failures
        self.breaker_open_s = float(spec.breaker_open)

    def gather(self, wide: np.ndarray, n: int) -> np.ndarray:
        """The model input for the first ``n`` rows of ``wide`` (no copy when identity)."""
        cols = self.cols
        if cols is None:
            return wide[:n]
        if n == 1:
            np.take(wide[0], cols, out=self.x1[0])
            return self.x1
        if n > self.xbuf.shape[0]:
            self.xbuf = np.zeros((max(n, 2 * self.xbuf.shape[0]), len(cols)), dtype=np.float32)
            self.x1 = self.xbuf[:1]
        out = self.xbuf[:n]
        np.take(wide[:n], cols, axis=1, out=out)
        return out


def arm_breakers(rungs: Sequence[Rung], clock: Clock) -> None:
    """A circuit breaker on every model rung that declares one (``breaker_failures``) and has
    none yet, on ``clock`` (the engine's).  Failures only (raised, timed out, non-finite):
    slowness is the budget check's business, so the slow-call rules are off.  The open period
    does not grow after a failed trial: a trial costs one call of a failing model, and a model
    that heals serves again within ``breaker_open``, however long it had failed."""
    for r in rungs:
        if r.model is not None and r.breaker is None and r.breaker_failures:
            cfg = BreakerConfig(failures=r.breaker_failures, window=0, open_s=r.breaker_open_s,
                                max_open_s=r.breaker_open_s, slow_s=3600.0)
            r.breaker = CircuitBreaker(cfg, clock, name=f"model:{r.name}")


def bind_model(r: Rung, m: LoadedModel, pos: Mapping[str, int]) -> None:
    """Point rung ``r`` at model ``m``: its label, isolation and the gather from the wide
    columns (``pos``: column -> index; every input of ``m`` must be in it)."""
    r.model = m
    r.label = m.label
    r.isolated = m.runtime if isinstance(m.runtime, IsolatedRuntime) else None
    idx = [pos[c] for c in m.manifest.inputs]
    if idx == list(range(len(pos))):
        r.cols, r.xbuf = None, np.zeros((0, 0), dtype=np.float32)
    else:
        r.cols = np.array(idx, dtype=np.intp)
        r.xbuf = np.zeros((64, len(idx)), dtype=np.float32)
    r.x1 = r.xbuf[:1]


def swapped_ladder(rungs: Sequence[Rung], rung_name: str, m: Any, columns: Sequence[str],
                   outputs: tuple[str, ...]) -> tuple[tuple[Rung, ...], int, LoadedModel]:
    """``rungs`` with model rung ``rung_name`` serving ``m`` instead, built aside (a hot swap
    publishes the result at once): the new ladder, the rung's index and the model it replaces.
    The rung keeps its name, index and kind; the model is re-bound (label, isolation, gather).
    Raises ``ModelError``, building nothing, for an unknown rung or a model that answers other
    outputs or reads columns the engine does not assemble."""
    if not isinstance(m, LoadedModel):
        raise TypeError(f"a model rung needs a LoadedModel, not {type(m).__name__}")
    old = next((r for r in rungs if r.name == rung_name and r.model is not None), None)
    if old is None or old.model is None:
        names = [r.name for r in rungs if r.model is not None]
        raise ModelError(f"no model rung named {rung_name!r}; model rungs: {names}")
    if m.manifest.outputs != outputs:
        raise ModelError(f"model {m.label} answers {list(m.manifest.outputs)}, "
                         f"the ladder answers {list(outputs)}")
    pos = {c: i for i, c in enumerate(columns)}
    missing = [c for c in m.manifest.inputs if c not in pos]
    if missing:
        raise ModelError(f"model {m.label} reads {missing}, which this engine does not assemble")
    new = Rung.__new__(Rung)
    for slot in Rung.__slots__:
        setattr(new, slot, getattr(old, slot))
    new.breaker = None  # the new version starts with a breaker of its own
    bind_model(new, m, pos)
    return tuple(new if r is old else r for r in rungs), old.index, old.model


def compile_ladder(
    specs: Sequence[RungSpec],
    models: Mapping[str, LoadedModel],
    columns: Sequence[str],
) -> tuple[tuple[Rung, ...], tuple[str, ...]]:
    """Compile rungs against loaded models and the wide column layout.

    Returns the rungs and the output names every rung answers with (all model rungs must
    agree; the default rung must declare exactly those outputs).
    """
    rungs: list[Rung] = []
    outputs: tuple[str, ...] | None = None
    pos = {c: i for i, c in enumerate(columns)}
    for i, s in enumerate(specs):
        r = Rung(s, i)
        if s.kind is RungKind.MODEL:
            assert s.model is not None
            m = models[s.model]
            if outputs is None:
                outputs = m.manifest.outputs
            elif m.manifest.outputs != outputs:
                raise SpecError(
                    f"rung {s.name!r}: model {m.label} answers {list(m.manifest.outputs)}, "
                    f"the ladder answers {list(outputs)} - at `$.ladder[{i}].model`",
                    path=f"$.ladder[{i}].model",
                )
            missing = [c for c in m.manifest.inputs if c not in pos]
            if missing:
                raise SpecError(
                    f"model {m.label} reads {missing}, which no feature view serves"
                    f" - at `$.ladder[{i}].model`",
                    path=f"$.ladder[{i}].model",
                )
            bind_model(r, m, pos)
        rungs.append(r)
    assert outputs is not None  # the spec guarantees a first model rung
    for i, (s, r) in enumerate(zip(specs, rungs, strict=True)):
        if s.kind is RungKind.DEFAULT:
            assert s.outputs is not None
            if set(s.outputs) != set(outputs):
                raise SpecError(
                    f"default rung declares {sorted(s.outputs)}, the models answer {list(outputs)}"
                    f" - at `$.ladder[{i}].outputs`",
                    path=f"$.ladder[{i}].outputs",
                )
            r.default = np.array([s.outputs[o] for o in outputs], dtype=np.float64)
            r.default.flags.writeable = False
    return tuple(rungs), outputs


class LastGood:
    """The last model answer per entity row, with its time (monotonic ns).  Row 0 (unknown
    entities) is never served.  Arrays grow with the store; one owner thread."""

    __slots__ = ("outputs", "written_ns")

    def __init__(self, n_outputs: int, capacity: int = 1024) -> None:
        self.outputs = np.zeros((capacity, n_outputs), dtype=np.float64)
        self.written_ns = np.zeros(capacity, dtype=np.int64)

    def _grow(self, row: int) -> None:
        cap = max(row + 1, 2 * len(self.written_ns))
        outputs = np.zeros((cap, self.outputs.shape[1]), dtype=np.float64)
        outputs[: len(self.outputs)] = self.outputs
        written = np.zeros(cap, dtype=np.int64)
        written[: len(self.written_ns)] = self.written_ns
        self.outputs, self.written_ns = outputs, written

    def put(self, row: int, out: np.ndarray, now_ns: int) -> None:
        """Remember ``out`` as ``row``'s last good answer at ``now_ns``."""
        if row >= len(self.written_ns):
            self._grow(row)
        self.outputs[row] = out
        self.written_ns[row] = now_ns

    def put_many(self, rows: np.ndarray, out: np.ndarray, now_ns: int) -> None:
        """Remember the answers of many rows at once."""
        if rows.size and int(rows.max()) >= len(self.written_ns):
            self._grow(int(rows.max()))
        self.outputs[rows] = out
        self.written_ns[rows] = now_ns

    def get(self, row: int, now_ns: int, max_age_ns: int | None) -> np.ndarray | None:
        """A copy of ``row``'s last good answer if it is younger than ``max_age_ns``, else None."""
        if row == 0 or row >= len(self.written_ns):
            return None
        w = int(self.written_ns[row])
        if w == 0 or (max_age_ns is not None and now_ns - w > max_age_ns):
            return None
        out: np.ndarray = self.outputs[row].copy()
        return out

    def available(self, rows: np.ndarray, now_ns: int, max_age_ns: int | None) -> np.ndarray:
        """Mask of rows with a servable last good answer."""
        inside = rows < len(self.written_ns)
        w = np.zeros(len(rows), dtype=np.int64)
        w[inside] = self.written_ns[rows[inside]]
        ok: np.ndarray = (rows != 0) & (w != 0)
        if max_age_ns is not None:
            ok &= now_ns - w <= max_age_ns
        return ok
