"""Assemble the feature vector of a decision: stored rows, TTL checks, request transforms.

At service load the assembler lays out one *wide* float32 vector: the fields of every view
the ladder's models use, view after view.  A decision fills it once (one row copy per stored
view, one transform call per request view); each model rung then reads its own columns.
Nothing here allocates per request at batch 1 apart from the transform's float results.

Each fill also remembers, per stored view and row, the write time of the store row it read
(``written_ns``: a preallocated int64 array, ``NEVER`` for an unknown or never-written row)
and the time it filled at (``filled_ns``), so a side-path consumer (the audit log) can record
how old every stored value was at decision time: one array write per stored view.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tailguard.decision import Flag
from tailguard.errors import ValidationError
from tailguard.features.store import NEVER, InMemoryOnlineStore, ViewTable
from tailguard.features.view import FeatureView

__all__ = ["FeatureAssembler"]

_STALE = int(Flag.STALE_FEATURE)
_UNKNOWN = int(Flag.UNKNOWN_ENTITY)
_NUMBER = (int, float)


class _Stored:
    __slots__ = ("default", "entity_pos", "hi", "lo", "name", "table", "ttl_ns")

    def __init__(self, view: FeatureView, entity_pos: int, lo: int, table: ViewTable) -> None:
        self.name = view.name
        # The table object is stable (growth replaces its arrays, not the object).
        self.table = table
        self.entity_pos = entity_pos
        self.lo = lo
        self.hi = lo + len(view.spec.fields)
        self.ttl_ns = view.ttl_ns
        self.default = view.default_f32


class _Request:
    __slots__ = ("fn", "hi", "inputs", "lo", "name")

    def __init__(self, view: FeatureView, lo: int) -> None:
        self.name = view.name
        self.lo = lo
        self.hi = lo + len(view.spec.fields)
        self.inputs = view.spec.inputs
        self.fn = view.transform


class FeatureAssembler:
    """Fills the wide feature vector for one or many entities (owned by the engine's thread)."""

    def __init__(
        self, views: Mapping[str, FeatureView], used: Sequence[str], store: InMemoryOnlineStore
    ) -> None:
        self._store = store
        entities: list[str] = []
        stored: list[_Stored] = []
        request: list[_Request] = []
        columns: list[str] = []
        for name in used:
            v = views[name]
            lo = len(columns)
            columns.extend(v.qualified())
            if v.is_request:
                request.append(_Request(v, lo))
                continue
            assert v.spec.entity is not None
            if v.spec.entity not in entities:
                entities.append(v.spec.entity)
            stored.append(_Stored(v, entities.index(v.spec.entity), lo, store.table(name)))
        self.columns: tuple[str, ...] = tuple(columns)
        self.entities: tuple[str, ...] = tuple(entities)
        self.context_fields: tuple[str, ...] = tuple(
            dict.fromkeys(f for r in request for f in r.inputs)
        )
        self._stored = tuple(stored)
        self._request = tuple(request)
        #: Stored view names, in the column order of ``written_ns``.
        self.stored_views: tuple[str, ...] = tuple(s.name for s in stored)
        #: Write time (store clock, ns) of the row each stored view served in the last fill,
        #: per batch row; ``NEVER`` for an unknown entity or a row never written.  Grown by
        #: ``fill_many`` when a batch is larger; rows past the last fill are stale.
        self.written_ns = np.full((64, len(stored)), NEVER, dtype=np.int64)
        self._written_row = self.written_ns[0]
        #: The ``now_ns`` of the last fill (the engine's clock).
        self.filled_ns = 0

    @property
    def stored_layout(self) -> tuple[tuple[str, int, int, int], ...]:
        """Per stored view, in ``stored_views`` order: its name, the position of its entity in
        ``entities`` and its columns ``lo:hi`` in the wide vector."""
        return tuple((s.name, s.entity_pos, s.lo, s.hi) for s in self._stored)

    @property
    def width(self) -> int:
        """Number of columns of the wide feature vector."""
        return len(self.columns)

    def column_index(self, names: Sequence[str]) -> np.ndarray:
        """Positions of qualified column names (``view.field``) in the wide vector."""
        pos = {c: i for i, c in enumerate(self.columns)}
        missing = [n for n in names if n not in pos]
        if missing:
            raise KeyError(f"columns not served by this service: {missing}")
        return np.array([pos[n] for n in names], dtype=np.intp)

    # -- one entity ----------------------------------------------------------------------
    def fill_one(
        self, rows: Sequence[int], ctx: Mapping[str, Any] | None, out: np.ndarray, now_ns: int
    ) -> int:
        """Fill ``out`` (the wide vector, 1-D float32) for one entity; returns flag bits."""
        flags = 0
        self.filled_ns = now_ns
        seen = self._written_row
        for j, s in enumerate(self._stored):
            row = rows[s.entity_pos]
            if row == 0:
                out[s.lo : s.hi] = s.default
                seen[j] = NEVER
                flags |= _UNKNOWN
                continue
            t = s.table
            written = int(t.written_ns[row])
            seen[j] = written
            if written == NEVER or (s.ttl_ns is not None and written < now_ns - s.ttl_ns):
                out[s.lo : s.hi] = s.default
                flags |= _STALE
            else:
                out[s.lo : s.hi] = t.f32[row]
        if self._request:
            if ctx is None:
                raise ValidationError(
                    f"this service needs request context {list(self.context_fields)}",
                    field="context",
                )
            for r in self._request:
                try:
                    args = [ctx[f] for f in r.inputs]
                except (KeyError, TypeError):
                    args = [_scalar(ctx, f) for f in r.inputs]  # raises the precise error
                for a in args:
                    if type(a) is not float:
                        args = [_scalar(ctx, f) for f in r.inputs]  # validates, or raises
                        break
                vals = r.fn(*args) if r.fn is not None else args  # type: ignore[operator]
                if type(vals) is not tuple and type(vals) is not list:
                    vals = (vals,)  # a one-field view may return its value bare
                out[r.lo : r.hi] = vals
        return flags

    # -- many entities ---------------------------------------------------------------------
    def fill_many(
        self,
        rows: np.ndarray,
        ctx: Mapping[str, Any] | None,
        out: np.ndarray,
        now_ns: int,
    ) -> np.ndarray:
        """Fill ``out[:n]`` for ``rows`` of shape (n, n_entities); returns per-row flags."""
        n = rows.shape[0]
        flags = np.zeros(n, dtype=np.uint8)
        self.filled_ns = now_ns
        if n > self.written_ns.shape[0]:
            self.written_ns = np.full((n, len(self._stored)), NEVER, dtype=np.int64)
            self._written_row = self.written_ns[0]
        seen = self.written_ns
        for j, s in enumerate(self._stored):
            r = rows[:, s.entity_pos]
            t = s.table
            written = t.written_ns[r]
            seen[:n, j] = written
            fresh = written != NEVER
            if s.ttl_ns is not None:
                fresh &= written >= now_ns - s.ttl_ns
            unknown = r == 0
            out[:n, s.lo : s.hi] = t.f32[r]
            bad = ~fresh
            if bad.any():
                out[:n, s.lo : s.hi][bad] = s.default
                flags[bad & ~unknown] |= _STALE
                flags[unknown] |= _UNKNOWN
        if self._request:
            if ctx is None:
                raise ValidationError(
                    f"this service needs request context {list(self.context_fields)}",
                    field="context",
                )
            for q in self._request:
                args = [_column(ctx, f, n) for f in q.inputs]
                vals = q.fn(*args) if q.fn is not None else args  # type: ignore[operator]
                if not isinstance(vals, tuple | list):
                    vals = (vals,)  # a one-field view may return its value bare
                for j, v in enumerate(vals):
                    out[:n, q.lo + j] = v
        return flags


def _scalar(ctx: Mapping[str, Any], name: str) -> float:
    try:
        v = ctx[name]
    except KeyError:
        raise ValidationError(f"missing context field {name!r}", field=f"context.{name}") from None
    except TypeError:
        raise ValidationError("context must be a mapping of field to number", field="context") from None
    if type(v) is float or (isinstance(v, (int, float, np.number)) and not isinstance(v, bool)):
        return v  # type: ignore[return-value]
    raise ValidationError(
        f"context field {name!r} must be a number, got {type(v).__name__}", field=f"context.{name}"
    )


def _column(ctx: Mapping[str, Any], name: str, n: int) -> np.ndarray | float:
    try:
        v = ctx[name]
    except KeyError:
        raise ValidationError(f"missing context field {name!r}", field=f"context.{name}") from None
    except TypeError:
        raise ValidationError("context must be a mapping of field to number", field="context") from None
    if isinstance(v, _NUMBER) and not isinstance(v, bool):
        return float(v)
    try:
        raw = np.asarray(v)
    except (TypeError, ValueError):
        raw = np.asarray(None)
    if raw.dtype.kind not in "iuf":  # no strings, bools or objects: the same rule as predict
        raise ValidationError(f"context field {name!r} must be numbers", field=f"context.{name}")
    arr = raw.astype(np.float64, copy=False)
    if arr.shape not in ((), (n,)):
        raise ValidationError(
            f"context field {name!r} must be a scalar or have shape ({n},), got {arr.shape}",
            field=f"context.{name}",
        )
    return arr
