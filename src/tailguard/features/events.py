"""Stream events: the reasons an event is not applied, dead letters, and the checks.

An event is a mapping with its event time ``ts_ns`` (int ns since the epoch), the key of each
entity it is about under the entity's name (``{"instrument": "AAPL", ...}``), an optional id
(the field ``[stream].event_id`` names) and the input fields of the views it feeds.  Every
event the stream processor is handed ends in exactly one bucket of its statistics: applied,
ignored (it touches no view), or one ``EventReason``.  Reason values are stable codes: they
appear in counters, dead-letter headers and logs.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

import numpy as np

from tailguard.spec import EventAction, StreamSpec

__all__ = [
    "BAD_REASONS",
    "DeadLetter",
    "DeadLetterSink",
    "EventReason",
    "Reject",
    "action_for",
    "check_inputs",
    "check_number",
    "check_time",
]


class EventReason(enum.Enum):
    """Why an event was not applied (the value is the stable code)."""

    MISSING_FIELD = "missing_field"  # ts_ns, an entity key or a view input is absent
    WRONG_TYPE = "wrong_type"  # a field holds the wrong type (e.g. a string price)
    NOT_FINITE = "not_finite"  # a view input is NaN or infinite
    FUTURE = "future"  # event time beyond wall clock + [stream].max_future
    PAST = "past"  # event time before wall clock - [stream].max_past
    UNKNOWN_ENTITY = "unknown_entity"  # no stream view for the entity
    TRANSFORM_ERROR = "transform_error"  # the view's transform raised (its state is reset)
    DECODE = "decode"  # the ingest worker could not decode a map from the message
    DUPLICATE = "duplicate"  # event id seen within the dedupe window, or stream sequence replayed
    LATE = "late"  # behind the watermark, or out of order for a view that drops those


#: Reasons routed by ``[stream].on_bad`` (duplicates and late events have their own policy).
BAD_REASONS = frozenset(EventReason) - {EventReason.DUPLICATE, EventReason.LATE}


class Reject(Exception):
    """Raised inside the processor when an event is not applied; ``field`` names the culprit."""

    def __init__(self, reason: EventReason, detail: str, field: str = "") -> None:
        super().__init__(detail)
        self.reason, self.detail, self.field = reason, detail, field


class DeadLetter(NamedTuple):
    """One event routed to the dead letters: why, a human detail, the event as received."""

    reason: EventReason
    detail: str
    event: Mapping[str, Any]


class DeadLetterSink(Protocol):
    """Receives dead letters on the processor's owner thread (must not block for long)."""

    def __call__(self, event: Mapping[str, Any], reason: EventReason, detail: str) -> None: ...


def action_for(config: StreamSpec, reason: EventReason) -> EventAction:
    """The declared action for ``reason``."""
    if reason is EventReason.DUPLICATE:
        return config.on_duplicate
    if reason is EventReason.LATE:
        return config.on_late
    return config.on_bad


_NUMBER_TYPES = (int, float, np.integer, np.floating)


def check_number(name: str, value: Any) -> tuple[EventReason, str] | None:
    """None when ``value`` is a finite number (bool is not one), else the reason and detail."""
    t = type(value)
    if t is not float and t is not int and (isinstance(value, bool) or not isinstance(value, _NUMBER_TYPES)):
        return EventReason.WRONG_TYPE, f"field {name!r} must be a number, got {t.__name__}"
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite:
        return EventReason.NOT_FINITE, f"field {name!r} is not finite: {value!r}"
    return None


_MISSING = object()


def check_time(
    event: Mapping[str, Any], wall_ns: int | None, future_ns: int | None, past_ns: int | None
) -> int:
    """The event time ``ts_ns`` as an int; raises ``Reject`` when absent, not an int, or
    outside ``[wall_ns - past_ns, wall_ns + future_ns]`` (bounds of None are not checked)."""
    ts = event.get("ts_ns", _MISSING)
    if type(ts) is not int:
        if ts is _MISSING:
            raise Reject(EventReason.MISSING_FIELD, "event has no 'ts_ns' (event time in ns)", "ts_ns")
        if not isinstance(ts, np.integer):
            raise Reject(EventReason.WRONG_TYPE, f"'ts_ns' must be an int, got {type(ts).__name__}", "ts_ns")
        ts = int(ts)
    if wall_ns is not None:
        if future_ns is not None and ts > wall_ns + future_ns:
            raise Reject(EventReason.FUTURE, f"event time {ts} is beyond the allowed future", "ts_ns")
        if past_ns is not None and ts < wall_ns - past_ns:
            raise Reject(EventReason.PAST, f"event time {ts} is before the allowed past", "ts_ns")
    return ts


def check_inputs(view: str, inputs: tuple[str, ...], event: Mapping[str, Any]) -> bool:
    """Whether the event touches a view reading ``inputs`` (it carries one of them); raises
    ``Reject`` when it touches it with an input missing or not a finite number."""
    missing = None
    hit = False
    for f in inputs:
        v = event.get(f, _MISSING)
        if v is _MISSING:
            missing = f
            continue
        hit = True
        bad = check_number(f, v)
        if bad is not None:
            raise Reject(bad[0], bad[1], f)
    if hit and missing is not None:
        raise Reject(EventReason.MISSING_FIELD, f"view {view!r} needs field {missing!r}", missing)
    return hit
