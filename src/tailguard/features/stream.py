"""Drive stream transforms with events and write their values to the online store.

The embedded default is an in-process stream: the caller hands events to ``apply`` (or
``process``) on the thread that owns the processor and the store.  The ingest worker
(``tailguard.features.ingest``) feeds the same processor from NATS JetStream.

Per event, in this order, before any state changes (an event is applied whole or not at all):

1. **Sequence** (``seq``, the ingest worker's stream sequence): one not above the last
   applied is a redelivery -> ``duplicate``.
2. **Shape**: ``ts_ns`` an int, each entity key of the declared key type, each input of
   each view the event touches a finite number -> else ``missing_field``/``wrong_type``/
   ``not_finite``; ``ts_ns`` within the declared bounds of the wall clock -> else
   ``future``/``past``; an entity with no stream view -> ``unknown_entity``.
3. **Event id** (``[stream].event_id``): seen among the last ``dedupe_window`` ids ->
   ``duplicate``.
4. **Routing**: a view with declared ``inputs`` is recomputed only by events carrying them.
5. **Lateness**, per view: the watermark is the latest event time the processor has seen
   minus the view's ``allowed_lateness``.  An event behind it is late; one older than the
   entity's last event but not behind it is out of order: dropped (late) unless the view
   declares ``late = "apply"``.  Views without ``allowed_lateness`` judge order per entity only.

Each reason is counted and routed by ``[stream]``: ``drop``, ``dead_letter`` (to the sink,
or kept in ``dead_letters`` when there is none) or ``raise`` (``ValidationError``).  A
transform that raises gets a fresh state for that entity (a half-updated aggregate is never
served) and the event is routed as ``transform_error``.  Writes go through at once, or,
with ``write_through=False``, are coalesced per entity until ``flush()`` (the worker
flushes once per fetched batch, before acknowledging it).  ``flush`` hands each view's
changed rows to the store's ``write_many`` in one call when the store has one (the Redis
store: one pipelined round trip per view), else writes them row by row.

``snapshot()`` / ``restore()``: the processor's whole state at one stream position (every
view's per-entity states and last event times, the watermark base, the remembered event
ids, the counters) as a versioned ``ProcessorSnapshot``.  A processor restored from a
snapshot gives, for the same further events, the same values bit for bit as the one it was
taken from; the ingest worker's checkpoint is a pickled snapshot.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np

from tailguard.clock import Clock, MonotonicClock
from tailguard.errors import FeatureError, ValidationError
from tailguard.features.events import (
    DeadLetter,
    DeadLetterSink,
    EventReason,
    Reject,
    action_for,
    check_inputs,
    check_time,
)
from tailguard.features.transforms import StreamTransform
from tailguard.features.view import FeatureView
from tailguard.spec import EntitySpec, EventAction, LatePolicy, StreamSpec, ViewSource

__all__ = ["SNAPSHOT_VERSION", "FeatureWriter", "ProcessorSnapshot", "StreamProcessor", "ViewStates"]

#: The layout version of ``ProcessorSnapshot`` (bumped when its fields change meaning).
SNAPSHOT_VERSION = 1

_COUNTERS = ("applied", "ignored", "late_applied", "dead_lettered", "states_reset")


class FeatureWriter(Protocol):
    """What the processor needs of an online store (the in-memory and Redis stores have it)."""

    def write(
        self, view: str, key: Any, values: Sequence[float] | np.ndarray, event_ns: int | None = None
    ) -> None:
        """Store ``values`` as ``view``'s row for ``key`` (``event_ns``: the event time)."""


class ViewStates(NamedTuple):
    """One view's part of a snapshot: its version, per-entity states and last event times."""

    version: str
    states: dict[Any, Any]
    last_ts: dict[Any, int]


@dataclass(frozen=True)
class ProcessorSnapshot:
    """A ``StreamProcessor``'s whole state at stream position ``last_seq`` (see the module doc).

    Picklable when the transforms' states are.  ``views``: view name -> ``ViewStates``;
    ``event_ids``: the remembered ids, oldest first; ``counters``: ``statistics()`` without
    ``last_seq``."""

    version: int
    last_seq: int
    max_ts_ns: int | None
    views: dict[str, ViewStates]
    event_ids: tuple[Any, ...]
    counters: dict[str, int]


class _Route:
    __slots__ = ("apply_late", "dirty", "inputs", "last_ts", "lateness_ns", "name", "states", "transform",
                 "version")

    def __init__(self, view: FeatureView, transform: StreamTransform) -> None:
        self.name = view.name
        self.version = view.version
        self.transform = transform
        self.inputs = view.spec.inputs
        lateness = view.spec.allowed_lateness
        self.lateness_ns = None if lateness is None else round(lateness * 1e9)
        self.apply_late = view.spec.late is LatePolicy.APPLY
        self.states: dict[Any, Any] = {}
        self.last_ts: dict[Any, int] = {}
        self.dirty: dict[Any, None] = {}


class StreamProcessor:
    """Applies events to the stream views of their entities (one owner thread)."""

    def __init__(
        self,
        views: Mapping[str, FeatureView],
        store: FeatureWriter,
        config: StreamSpec | None = None,
        *,
        entities: Iterable[EntitySpec] | None = None,
        clock: Clock | None = None,
        dead_letter: DeadLetterSink | None = None,
        write_through: bool = True,
    ) -> None:
        self._store = store
        self.config = config or StreamSpec()
        self._clock = clock or MonotonicClock()
        self.dead_letter = dead_letter
        self.write_through = write_through
        self._by_entity: dict[str, list[_Route]] = {}
        for v in views.values():
            if v.spec.source is ViewSource.STREAM and isinstance(v.transform, StreamTransform):
                assert v.spec.entity is not None
                self._by_entity.setdefault(v.spec.entity, []).append(_Route(v, v.transform))
        self._key_types = self._resolve_key_types(entities)
        #: The store's batch write (``write_many(view, keys, values, event_ns)``), when it has one.
        self._write_many: Callable[..., None] | None = getattr(store, "write_many", None)
        c = self.config
        self._future_ns = None if c.max_future is None else round(c.max_future * 1e9)
        self._past_ns = None if c.max_past is None else round(c.max_past * 1e9)
        # Precomputed for the event path: what it can skip per event.
        self._bounded = self._future_ns is not None or self._past_ns is not None
        self._names = tuple(self._by_entity)
        self._routed_by_inputs = {e: any(r.inputs for r in rs) for e, rs in self._by_entity.items()}
        self._ids: set[Any] = set()
        self._id_order: deque[Any] = deque()
        #: The latest event time seen (the watermark's base); None before any event.
        self.max_ts_ns: int | None = None
        #: The last stream sequence applied (0: none); redeliveries at or below it are duplicates.
        self.last_seq = 0
        self.applied = 0
        self.ignored = 0
        self.late_applied = 0
        self.dead_lettered = 0
        self.states_reset = 0
        self.rejected = dict.fromkeys(EventReason, 0)
        #: Dead letters kept when no sink is set (most recent 256).
        self.dead_letters: deque[DeadLetter] = deque(maxlen=256)

    def _resolve_key_types(self, entities: Iterable[EntitySpec] | None) -> dict[str, type]:
        if entities is not None:
            return {e.name: str if e.key_dtype == "str" else int for e in entities}
        index = getattr(self._store, "entity_index", None)
        if index is None:
            return {}
        return {name: index(name).key_type for name in self._by_entity}

    @property
    def entities(self) -> tuple[str, ...]:
        """Entities that have at least one stream view with a transform."""
        return tuple(self._by_entity)

    @property
    def view_versions(self) -> dict[str, str]:
        """Stream view name -> version, for the views this processor computes."""
        return {r.name: r.version for rs in self._by_entity.values() for r in rs}

    @property
    def late(self) -> int:
        """Events not applied because they were late."""
        return self.rejected[EventReason.LATE]

    # -- the event path ----------------------------------------------------------------
    def apply(
        self, entity: str, key: Any, event: Mapping[str, Any], *, seq: int | None = None
    ) -> EventReason | None:
        """Fold one event of ``entity``/``key`` into that entity's stream views.  Returns None
        when applied (or touching no view), else the reason it was not (see the module doc)."""
        try:
            self._check_seq(seq)
            if entity not in self._by_entity:
                raise Reject(EventReason.UNKNOWN_ENTITY, f"no stream view for entity {entity!r}", "entity")
            return self._run(((entity, self._check_key(entity, key)),), event)
        except Reject as rej:
            return self._route(rej, event)

    def process(self, event: Mapping[str, Any], *, seq: int | None = None) -> EventReason | None:
        """Fold one event into the stream views of every entity whose key it carries (under
        the entity's name).  Returns None when applied, else the reason it was not."""
        try:
            if seq is not None:
                self._check_seq(seq)
            pairs = []
            key_types = self._key_types
            for name in self._names:
                if name in event:
                    key = event[name]
                    if type(key) is not key_types.get(name, type(key)):
                        key = self._check_key(name, key)
                    pairs.append((name, key))
            if not pairs:
                names = ", ".join(repr(n) for n in self._by_entity) or "(none)"
                raise Reject(EventReason.MISSING_FIELD, f"no entity key: expected one of {names}", "entity")
            return self._run(pairs, event)
        except Reject as rej:
            return self._route(rej, event)

    def _check_seq(self, seq: int | None) -> None:
        if seq is not None:
            if seq <= self.last_seq:
                raise Reject(EventReason.DUPLICATE, f"stream sequence {seq} was already applied", "seq")
            self.last_seq = seq

    def _check_key(self, entity: str, key: Any) -> Any:
        kt = self._key_types.get(entity)
        if kt is None or type(key) is kt:
            return key
        if kt is int and isinstance(key, np.integer):
            return int(key)
        raise Reject(
            EventReason.WRONG_TYPE,
            f"entity {entity!r} keys are {kt.__name__}, got {type(key).__name__}",
            entity,
        )

    def _touched(self, routes: list[_Route], event: Mapping[str, Any]) -> list[_Route]:
        return [r for r in routes if not r.inputs or check_inputs(r.name, r.inputs, event)]

    def _check_id(self, event: Mapping[str, Any]) -> Any:
        field = self.config.event_id
        if field is None:
            return None
        eid = event.get(field)
        if eid is None:
            return None
        if type(eid) not in (str, int, bytes):
            raise Reject(EventReason.WRONG_TYPE, f"event id {field!r} must be a str or int", field)
        if eid in self._ids:
            raise Reject(EventReason.DUPLICATE, f"event id {eid!r} was already applied", field)
        return eid

    def _remember(self, eid: Any) -> None:
        self._ids.add(eid)
        self._id_order.append(eid)
        if len(self._id_order) > self.config.dedupe_window:
            self._ids.discard(self._id_order.popleft())

    def _run(self, pairs: Sequence[tuple[str, Any]], event: Mapping[str, Any]) -> EventReason | None:
        ts = event.get("ts_ns")
        if type(ts) is not int or self._bounded:  # the common case (an int, no bounds) needs no call
            bounded = self._bounded
            ts = check_time(event, self._clock.wall_ns() if bounded else None, self._future_ns, self._past_ns)
        by_entity, by_inputs = self._by_entity, self._routed_by_inputs
        touched = [(key, self._touched(by_entity[entity], event) if by_inputs[entity] else by_entity[entity])
                   for entity, key in pairs]
        if self.config.event_id is not None:
            eid = self._check_id(event)
            if eid is not None:
                self._remember(eid)
        max_ts = self.max_ts_ns
        if max_ts is None or ts > max_ts:
            self.max_ts_ns = ts
        applied = late = any_route = False
        failed: Reject | None = None
        for key, routes in touched:
            for r in routes:
                any_route = True
                last = r.last_ts.get(key)
                if r.lateness_ns is not None and max_ts is not None and ts < max_ts - r.lateness_ns:
                    late = True
                    continue
                if last is not None and ts < last:
                    if not r.apply_late:
                        late = True
                        continue
                    self.late_applied += 1
                state = r.states.get(key)
                if state is None:
                    state = r.states[key] = r.transform.new_state()
                try:
                    r.transform.update(state, event)
                except Exception as exc:  # user code: never let it corrupt a state or the worker
                    del r.states[key]
                    self.states_reset += 1
                    failed = Reject(EventReason.TRANSFORM_ERROR, f"view {r.name!r}: {exc!r}", r.name)
                    continue
                if last is None or ts > last:
                    last = r.last_ts[key] = ts
                if self.write_through:
                    self._store.write(r.name, key, r.transform.values(state), event_ns=last)
                else:
                    r.dirty[key] = None
                applied = True
        if failed is not None:
            raise failed
        if applied:
            self.applied += 1
        elif late:
            raise Reject(EventReason.LATE, f"event time {ts} is late", "ts_ns")
        elif not any_route:
            self.ignored += 1
        return None

    def _route(self, rej: Reject, event: Mapping[str, Any]) -> EventReason:
        self.rejected[rej.reason] += 1
        action = action_for(self.config, rej.reason)
        if action is EventAction.DEAD_LETTER:
            self.dead_lettered += 1
            if self.dead_letter is not None:
                self.dead_letter(event, rej.reason, rej.detail)
            else:
                self.dead_letters.append(DeadLetter(rej.reason, rej.detail, event))
        elif action is EventAction.RAISE:
            raise ValidationError(f"bad event ({rej.reason.value}): {rej.detail}", field=rej.field)
        return rej.reason

    # -- coalesced writes, replay, statistics -----------------------------------------------
    def flush(self) -> int:
        """Write the current values of every view/entity changed since the last flush (for
        ``write_through=False``); returns the number of rows written.  Each view's rows go in
        one ``write_many`` call when the store has it.  A store error leaves the rows of the
        view that failed (and of those not reached) marked, so the next flush writes them."""
        n = 0
        many = self._write_many
        for routes in self._by_entity.values():
            for r in routes:
                if not r.dirty:
                    continue
                states, last_ts, values = r.states, r.last_ts, r.transform.values
                keys = [k for k in r.dirty if k in states]  # a reset state has nothing to write
                if many is not None and keys:
                    rows = np.array([values(states[k]) for k in keys], dtype=np.float64)
                    event_ns = np.fromiter((last_ts[k] for k in keys), dtype=np.int64, count=len(keys))
                    many(r.name, keys, rows, event_ns)
                else:
                    for key in keys:
                        self._store.write(r.name, key, values(states[key]), event_ns=last_ts[key])
                n += len(keys)
                r.dirty.clear()
        return n

    # -- snapshot and restore ------------------------------------------------------------------
    def snapshot(self, *, copy_states: bool = True) -> ProcessorSnapshot:
        """The processor's state now (see the module doc).  ``copy_states=False`` shares the
        live state objects instead of deep-copying them: only for a snapshot serialised at
        once, before the next event (the ingest checkpoint)."""
        views = {}
        for rs in self._by_entity.values():
            for r in rs:
                states = copy.deepcopy(r.states) if copy_states else r.states
                views[r.name] = ViewStates(r.version, states, dict(r.last_ts))
        counters = {name: getattr(self, name) for name in _COUNTERS}
        counters.update({reason.value: n for reason, n in self.rejected.items()})
        return ProcessorSnapshot(version=SNAPSHOT_VERSION, last_seq=self.last_seq, max_ts_ns=self.max_ts_ns,
                                 views=views, event_ids=tuple(self._id_order), counters=counters)

    def restore(self, snap: ProcessorSnapshot, *, copy_states: bool = True) -> None:
        """Replace this processor's state by ``snap``'s.  Every restored row is marked changed,
        so the next ``flush`` writes it.  A view the snapshot lacks starts empty; states of a
        view whose version differs are refused (``FeatureError``, nothing changed), as is a
        snapshot of another ``SNAPSHOT_VERSION``.  ``copy_states=False`` adopts the snapshot's
        state objects (for a snapshot nobody else holds, e.g. one just unpickled)."""
        if snap.version != SNAPSHOT_VERSION:
            raise FeatureError(f"stream snapshot version {snap.version} is not {SNAPSHOT_VERSION}")
        live = self.view_versions
        changed = sorted(n for n, v in snap.views.items() if n in live and live[n] != v.version)
        if changed:
            raise FeatureError(f"the snapshot holds states of views whose version changed since: {changed}")
        for rs in self._by_entity.values():
            for r in rs:
                saved = snap.views.get(r.name)
                if saved is None:
                    r.states, r.last_ts = {}, {}
                else:
                    r.states = copy.deepcopy(saved.states) if copy_states else saved.states
                    r.last_ts = dict(saved.last_ts)
                r.dirty = dict.fromkeys(r.states)
        self._ids.clear()
        self._id_order.clear()
        ids = snap.event_ids[-self.config.dedupe_window:]  # the window may have shrunk since
        self._ids.update(ids)
        self._id_order.extend(ids)
        self.max_ts_ns, self.last_seq = snap.max_ts_ns, snap.last_seq
        for name in _COUNTERS:
            setattr(self, name, snap.counters.get(name, 0))
        for reason in EventReason:
            self.rejected[reason] = snap.counters.get(reason.value, 0)

    def replay(self, entity: str, key_field: str, events: Iterable[Mapping[str, Any]]) -> int:
        """Apply events in order, taking each one's key from ``key_field``; returns the count."""
        n = 0
        for ev in events:
            self.apply(entity, ev[key_field], ev)
            n += 1
        return n

    def statistics(self) -> dict[str, int]:
        """Counters: every event lands in ``applied``, ``ignored`` or one reason (``late``,
        ``duplicate``, ``missing_field``...); ``late_applied`` (out-of-order events applied),
        ``dead_lettered``, ``states_reset`` and the stream position ``last_seq`` besides."""
        out = {"applied": self.applied, "ignored": self.ignored}
        out.update({r.value: n for r, n in self.rejected.items()})
        out.update(late_applied=self.late_applied, dead_lettered=self.dead_lettered,
                   states_reset=self.states_reset, last_seq=self.last_seq)
        return out
