"""Synthetic load for a budget check: entities in the store, request keys and context.

For each stored view the models read, ``entities`` synthetic entities get one row each in the
service's online store (``service.store.write_many``): every field's declared default plus
normal noise of ``|default| * 0.1 + 0.1`` (the spread of ``registry.swap.synthetic_rows``).
Request context fields (``assembler.context_fields``) are drawn around 1.0 with a spread of
0.1 (the context of ones the engine warms up on).  A ``Shift`` then moves the columns it
names.  Requests pick their entity keys and context from a pool made up front, so making a
request costs the load generator one list index, not random draws.

Rows are rewritten with ``refresh`` (same values, new write time) so that a run longer
than a view's TTL does not turn every stored value stale.  Owner thread only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tailguard.checkbudget.shift import Shift
from tailguard.service import Service

__all__ = ["Workload"]

_POOL = 4096  # requests made up front (cycled)


def _keys(key_dtype: str, n: int) -> list[Any]:
    if key_dtype == "int64":
        return list(range(1_000_001, 1_000_001 + n))
    return [f"synthetic-{i}" for i in range(n)]


class Workload:
    """Synthetic store rows and a pool of requests for ``service`` (see the module docstring)."""

    def __init__(self, service: Service, shift: Shift, *, entities: int = 256, batch: int = 1,
                 seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.service = service
        self.batch = batch
        asm = service.engine.assembler
        specs = {e.name: e for e in service.spec.entities}
        self.entity_keys: dict[str, list[Any]] = {
            e: _keys(specs[e].key_dtype, entities) for e in asm.entities
        }
        #: Per stored view: its entity and the float64 values written, (entities, fields).
        self.rows: dict[str, tuple[str, np.ndarray]] = {}
        ttls: list[int] = []
        for name in asm.stored_views:
            view = service.views[name]
            assert view.spec.entity is not None
            base = view.default_f32.astype(np.float64)
            values = base + rng.standard_normal((entities, len(base))) * (np.abs(base) * 0.1 + 0.1)
            for j, col in enumerate(view.qualified()):
                fs = shift.features.get(col)
                if fs is not None:
                    values[:, j] = fs.apply(values[:, j])
            self.rows[name] = (view.spec.entity, values)
            if view.ttl_ns is not None:
                ttls.append(view.ttl_ns)
        #: Rewrite rows this often (half the shortest TTL; None: never needed).
        self.refresh_ns: int | None = min(ttls) // 2 if ttls else None
        n_ctx = _POOL * batch
        self.context_values: dict[str, np.ndarray] = {}
        for f in asm.context_fields:
            v = 1.0 + 0.1 * rng.standard_normal(n_ctx)
            fs = shift.context.get(f)
            self.context_values[f] = fs.apply(v) if fs is not None else v
        picks = rng.integers(0, entities, (_POOL, batch))
        self.requests: list[tuple[Any, dict[str, Any]]] = [self._request(picks[i], i) for i in range(_POOL)]
        self.refresh()

    def _request(self, pick: np.ndarray, i: int) -> tuple[Any, dict[str, Any]]:
        b = self.batch
        ents = list(self.entity_keys)
        if b == 1:
            ctx: dict[str, Any] = {f: float(v[i]) for f, v in self.context_values.items()}
            if not ents:
                return None, ctx
            if len(ents) == 1:
                return self.entity_keys[ents[0]][int(pick[0])], ctx
            return {e: self.entity_keys[e][int(pick[0])] for e in ents}, ctx
        ctx = {f: v[i * b:(i + 1) * b].copy() for f, v in self.context_values.items()}
        if not ents:
            return list(range(b)), ctx
        if len(ents) == 1:
            ks = self.entity_keys[ents[0]]
            return [ks[int(p)] for p in pick], ctx
        return {e: [self.entity_keys[e][int(p)] for p in pick] for e in ents}, ctx

    def refresh(self) -> None:
        """(Re)write every synthetic entity's rows at the store clock's current time."""
        store = self.service.store
        for name, (entity, values) in self.rows.items():
            store.write_many(name, self.entity_keys[entity], values)
