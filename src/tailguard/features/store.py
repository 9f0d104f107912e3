"""The embedded online store: feature rows in numpy arrays, keyed by entity, in process memory.

Layout: per entity, a dict from key to row number; per stored view, arrays indexed by that
row number — the values in the declared dtypes (a structured array), the same values as
float32 (the model-input form, so a lookup is one row copy), the write time (monotonic ns,
for TTLs) and the event time.  Row 0 is reserved: it holds every view's declared defaults
and is what an unknown entity reads, so an unknown key costs a dict miss, not an exception.

Ownership: one thread writes (the feature worker or the replay loop) and decisions read on
the same thread.  A reader on another thread may see a row half-written; the Redis store of
a later issue is the shared, multi-process option.  Growth doubles all arrays of an entity,
so callers fetch arrays through ``table(...)`` each time rather than keeping references.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn

import numpy as np

from tailguard.clock import Clock, MonotonicClock
from tailguard.errors import ValidationError
from tailguard.features.view import FeatureView
from tailguard.spec import EntitySpec

__all__ = ["NEVER", "EntityIndex", "InMemoryOnlineStore", "ViewTable"]

#: Write time of a row that was never written (older than any real time).
NEVER = int(np.iinfo(np.int64).min)


class ViewTable:
    """One stored view's arrays; row ``i`` belongs to the entity key mapped to ``i``."""

    __slots__ = ("event_ns", "f32", "values", "view", "written_ns")

    def __init__(self, view: FeatureView, capacity: int) -> None:
        self.view = view
        self.values = np.full(capacity, view.default_row, dtype=view.row_dtype)
        self.f32 = np.tile(view.default_f32, (capacity, 1))
        self.written_ns = np.full(capacity, NEVER, dtype=np.int64)
        self.event_ns = np.full(capacity, NEVER, dtype=np.int64)

    def grow(self, capacity: int) -> None:
        """Reallocate every array to ``capacity`` rows, keeping the rows written so far."""
        n = len(self.written_ns)
        values = np.full(capacity, self.view.default_row, dtype=self.view.row_dtype)
        values[:n] = self.values
        f32 = np.tile(self.view.default_f32, (capacity, 1))
        f32[:n] = self.f32
        written = np.full(capacity, NEVER, dtype=np.int64)
        written[:n] = self.written_ns
        event = np.full(capacity, NEVER, dtype=np.int64)
        event[:n] = self.event_ns
        self.values, self.f32, self.written_ns, self.event_ns = values, f32, written, event


class EntityIndex:
    """Key -> row map of one entity (stable object; rows never move)."""
    __slots__ = ("capacity", "key_type", "rows", "tables")

    def __init__(self, spec: EntitySpec, capacity: int) -> None:
        self.key_type: type = str if spec.key_dtype == "str" else int
        self.rows: dict[Any, int] = {}
        self.capacity = capacity
        self.tables: list[ViewTable] = []


class InMemoryOnlineStore:
    """Online feature store in process memory (the embedded default)."""

    def __init__(
        self,
        views: Mapping[str, FeatureView],
        entities: Iterable[EntitySpec],
        *,
        clock: Clock | None = None,
        capacity: int = 1024,
    ) -> None:
        self._clock = clock or MonotonicClock()
        self._entities = {e.name: EntityIndex(e, max(capacity, 2)) for e in entities}
        self._tables: dict[str, ViewTable] = {}
        for name, v in views.items():
            if v.is_request:
                continue
            assert v.spec.entity is not None
            ent = self._entities[v.spec.entity]
            table = ViewTable(v, ent.capacity)
            ent.tables.append(table)
            self._tables[name] = table
        self.writes = 0

    # -- reads -------------------------------------------------------------------------
    def table(self, view: str) -> ViewTable:
        """The arrays of a stored view (fetch again after writes: growth replaces them)."""
        return self._tables[view]

    def entity_index(self, entity: str) -> EntityIndex:
        """The key -> row map of ``entity`` (for callers that resolve keys on a hot path)."""
        return self._entities[entity]

    def row(self, entity: str, key: Any) -> int:
        """Row of ``key`` (0 when unknown).  NumPy integers are accepted for int64 keys; any
        other type mismatch raises ``ValidationError``."""
        ent = self._entities[entity]
        if type(key) is not ent.key_type:
            key = _coerce_key(entity, key, ent.key_type)
        return ent.rows.get(key, 0)

    def rows(self, entity: str, keys: Sequence[Any]) -> np.ndarray:
        """Rows of many keys at once (0 where unknown), as an int64 array."""
        ent = self._entities[entity]
        kt = ent.key_type
        if set(map(type, keys)) - {kt}:  # one C-speed pass; the slow path only on mismatch
            keys = [k if type(k) is kt else _coerce_key(entity, k, kt) for k in keys]
        get = ent.rows.get
        return np.fromiter((get(k, 0) for k in keys), dtype=np.int64, count=len(keys))

    def read(self, view: str, key: Any) -> np.ndarray:
        """One entity's row of ``view`` in the declared dtypes (the defaults when unknown)."""
        t = self._tables[view]
        assert t.view.spec.entity is not None
        row: np.ndarray = t.values[self.row(t.view.spec.entity, key)].copy()
        return row

    def read_many(self, view: str, keys: Sequence[Any]) -> np.ndarray:
        """Rows of ``view`` for many keys, one pipelined gather (structured array)."""
        t = self._tables[view]
        assert t.view.spec.entity is not None
        rows: np.ndarray = t.values[self.rows(t.view.spec.entity, keys)]
        return rows

    def age_ns(self, view: str, key: Any) -> int | None:
        """Nanoseconds since ``key`` was last written in ``view`` (None if never)."""
        t = self._tables[view]
        assert t.view.spec.entity is not None
        written = int(t.written_ns[self.row(t.view.spec.entity, key)])
        return None if written == NEVER else self._clock.now_ns() - written

    def view_ages_ns(self, view: str) -> np.ndarray:
        """Age (ns) of every entity row written at least once in ``view`` (side path: a
        vectorised pass over the view's write times, for metrics and dashboards)."""
        t = self._tables[view]
        assert t.view.spec.entity is not None
        n = len(self._entities[t.view.spec.entity].rows)
        written = t.written_ns[1 : n + 1]
        written = written[written != NEVER]
        ages: np.ndarray = self._clock.now_ns() - written
        return ages

    def keys(self, entity: str) -> list[Any]:
        """Every key of ``entity`` the store has seen, in insertion order."""
        return list(self._entities[entity].rows)

    # -- writes ------------------------------------------------------------------------
    def write(
        self, view: str, key: Any, values: Sequence[float] | np.ndarray, event_ns: int | None = None
    ) -> None:
        """Write one entity's fields of ``view`` (declared order)."""
        t = self._tables[view]
        assert t.view.spec.entity is not None
        vals = tuple(values)
        if len(vals) != len(t.view.spec.fields):
            raise ValidationError(
                f"view {view!r} has {len(t.view.spec.fields)} fields, got {len(vals)} values",
                field=view,
            )
        i = self._ensure_row(t.view.spec.entity, key)
        t.values[i] = vals
        t.f32[i] = vals
        now = self._clock.now_ns()
        t.written_ns[i] = now
        t.event_ns[i] = now if event_ns is None else event_ns
        self.writes += 1

    def write_many(
        self,
        view: str,
        keys: Sequence[Any],
        values: np.ndarray,
        event_ns: np.ndarray | None = None,
    ) -> None:
        """Write many entities' rows at once; ``values`` is (n, n_fields) or structured.
        Everything is validated before any key is registered: a rejected write leaves no trace."""
        t = self._tables[view]
        entity = t.view.spec.entity
        assert entity is not None
        n_fields = len(t.view.spec.fields)
        kt = self._entities[entity].key_type
        keys = [k if type(k) is kt else _coerce_key(entity, k, kt) for k in keys]
        structured = values.dtype.names is not None
        if (structured and values.shape != (len(keys),)) or (
            not structured and values.shape != (len(keys), n_fields)
        ):
            raise ValidationError(
                f"view {view!r}: expected values of shape ({len(keys)}, {n_fields}), got {values.shape}",
                field=view,
            )
        idx = np.fromiter((self._ensure_row(entity, k) for k in keys), dtype=np.int64, count=len(keys))
        if structured:
            t.values[idx] = values.astype(t.view.row_dtype)
        else:
            for j, name in enumerate(t.view.field_names):
                t.values[name][idx] = values[:, j]
        for j, name in enumerate(t.view.field_names):
            t.f32[idx, j] = t.values[name][idx]
        now = self._clock.now_ns()
        t.written_ns[idx] = now
        t.event_ns[idx] = now if event_ns is None else event_ns
        self.writes += len(idx)

    def _ensure_row(self, entity: str, key: Any) -> int:
        ent = self._entities[entity]
        if type(key) is not ent.key_type:
            key = _coerce_key(entity, key, ent.key_type)
        i = ent.rows.get(key)
        if i is None:
            i = len(ent.rows) + 1  # row 0 is the defaults row
            if i >= ent.capacity:
                ent.capacity *= 2
                for t in ent.tables:
                    t.grow(ent.capacity)
            ent.rows[key] = i
        return i

    def statistics(self) -> dict[str, Any]:
        """Entities per type, capacity, total writes."""
        return {
            "entities": {n: len(e.rows) for n, e in self._entities.items()},
            "capacity": {n: e.capacity for n, e in self._entities.items()},
            "writes": self.writes,
        }


def _coerce_key(entity: str, key: Any, expected: type) -> Any:
    if expected is int and isinstance(key, np.integer):
        return int(key)
    _bad_key(entity, key, expected)


def _bad_key(entity: str, key: Any, expected: type) -> NoReturn:
    raise ValidationError(
        f"entity {entity!r} keys are {expected.__name__}, got {type(key).__name__} {key!r}",
        field=f"keys.{entity}",
    )
