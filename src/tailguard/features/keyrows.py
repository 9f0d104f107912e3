"""Entity keys to store rows: the engine's ingest stage (validation of the ``keys`` argument).

``rows_one`` serves ``Engine.predict`` when its single-entity fast path does not apply;
``rows_many`` serves ``Engine.predict_batch``.  An unknown key maps to row 0 (the store's
defaults row); a malformed ``keys`` argument is a ``ValidationError`` naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tailguard.errors import ValidationError
from tailguard.features.store import InMemoryOnlineStore

__all__ = ["rows_many", "rows_one"]


def rows_one(store: InMemoryOnlineStore, entities: tuple[str, ...], single: str | None,
             keys: Any) -> tuple[int, ...]:
    """The store row of each entity of one request's ``keys`` (a key, or {entity: key})."""
    if not entities:
        return (0,)  # request-only service: no stored features, no last good answer
    if single is not None and not isinstance(keys, Mapping):
        return (store.row(single, keys),)
    if not isinstance(keys, Mapping):
        raise ValidationError(
            f"this service needs one key per entity {list(entities)}", field="keys"
        )
    try:
        return tuple(store.row(e, keys[e]) for e in entities)
    except KeyError as exc:
        raise ValidationError(f"missing key for entity {exc.args[0]!r}", field="keys") from None


def rows_many(store: InMemoryOnlineStore, entities: tuple[str, ...], single: str | None,
              keys: Any) -> tuple[np.ndarray, int]:
    """Store rows (n, entities) of a batch's ``keys`` (a sequence, or {entity: sequence or
    scalar}, scalars broadcast) and n."""
    if not entities:
        if not isinstance(keys, Sequence | np.ndarray) or isinstance(keys, str | bytes):
            raise ValidationError("keys must be a sequence (one per row)", field="keys")
        return np.zeros((len(keys), 1), dtype=np.int64), len(keys)
    if single is not None and not isinstance(keys, Mapping):
        if isinstance(keys, str | bytes) or not isinstance(keys, Sequence | np.ndarray):
            raise ValidationError("keys must be a sequence of entity keys", field="keys")
        r = store.rows(single, keys if isinstance(keys, Sequence) else keys.tolist())
        return r.reshape(-1, 1), len(r)
    if not isinstance(keys, Mapping):
        raise ValidationError(f"keys must map each entity {list(entities)}", field="keys")
    n = None
    for e in entities:
        k = keys.get(e)
        if isinstance(k, Sequence | np.ndarray) and not isinstance(k, str | bytes):
            if n is not None and len(k) != n:
                raise ValidationError("key sequences differ in length", field=f"keys.{e}")
            n = len(k)
    if n is None:
        n = 1
    cols = []
    for e in entities:
        if e not in keys:
            raise ValidationError(f"missing key for entity {e!r}", field=f"keys.{e}")
        k = keys[e]
        if isinstance(k, Sequence | np.ndarray) and not isinstance(k, str | bytes):
            cols.append(store.rows(e, k if isinstance(k, Sequence) else k.tolist()))
        else:
            cols.append(np.full(n, store.row(e, k), dtype=np.int64))  # broadcast
    return np.stack(cols, axis=1), n
