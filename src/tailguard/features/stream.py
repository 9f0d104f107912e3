"""Drive stream transforms with events and write their values to the online store.

The embedded default is an in-process stream: the caller hands events to ``apply`` on the
thread that owns the store.  Each event carries its event time in ``ts_ns``; an event older
than the last one applied for the same entity and view is late: it is dropped and counted
(``statistics()["late"]``), so replays are deterministic whatever the arrival jitter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tailguard.errors import ValidationError
from tailguard.features.store import InMemoryOnlineStore
from tailguard.features.transforms import StreamTransform
from tailguard.features.view import FeatureView
from tailguard.spec import ViewSource

__all__ = ["StreamProcessor"]


class _Route:
    __slots__ = ("last_ts", "name", "states", "transform")

    def __init__(self, name: str, transform: StreamTransform) -> None:
        self.name = name
        self.transform = transform
        self.states: dict[Any, Any] = {}
        self.last_ts: dict[Any, int] = {}


class StreamProcessor:
    """Applies events to the stream views of each entity (one owner thread)."""

    def __init__(self, views: Mapping[str, FeatureView], store: InMemoryOnlineStore) -> None:
        self._store = store
        self._by_entity: dict[str, list[_Route]] = {}
        for name, v in views.items():
            if v.spec.source is ViewSource.STREAM and isinstance(v.transform, StreamTransform):
                assert v.spec.entity is not None
                self._by_entity.setdefault(v.spec.entity, []).append(_Route(name, v.transform))
        self.applied = 0
        self.late = 0

    @property
    def entities(self) -> tuple[str, ...]:
        """Entities that have at least one stream view with a transform."""
        return tuple(self._by_entity)

    def apply(self, entity: str, key: Any, event: Mapping[str, Any]) -> None:
        """Fold one event of ``entity``/``key`` into every stream view of that entity."""
        try:
            ts = event["ts_ns"]
        except KeyError:
            raise ValidationError("event has no 'ts_ns' (event time in ns)", field="ts_ns") from None
        routes = self._by_entity.get(entity)
        if routes is None:
            raise ValidationError(f"no stream view for entity {entity!r}", field="entity")
        applied = False
        for r in routes:
            last = r.last_ts.get(key)
            if last is not None and ts < last:
                continue
            state = r.states.get(key)
            if state is None:
                state = r.states[key] = r.transform.new_state()
            r.transform.update(state, event)
            r.last_ts[key] = ts
            self._store.write(r.name, key, r.transform.values(state), event_ns=ts)
            applied = True
        if applied:
            self.applied += 1
        else:
            self.late += 1

    def replay(self, entity: str, key_field: str, events: Iterable[Mapping[str, Any]]) -> int:
        """Apply events in order, taking each one's key from ``key_field``; returns the count."""
        n = 0
        for ev in events:
            self.apply(entity, ev[key_field], ev)
            n += 1
        return n

    def statistics(self) -> dict[str, int]:
        """Events applied and late events dropped (one count per event)."""
        return {"applied": self.applied, "late": self.late}
