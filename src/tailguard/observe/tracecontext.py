"""W3C Trace Context: parse and format ``traceparent`` headers, and the head ratio sampler.

A ``traceparent`` is ``version-traceid-parentid-flags`` in lower-case hex, e.g.
``00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01`` (W3C Trace Context, level 1).
Version ``ff`` is invalid; version ``00`` is exactly 55 characters; a higher version may
append fields after a ``-`` and is read by its first four fields (the spec's forward
compatibility rule).  All-zero trace or parent ids are invalid.  A header that does not
parse is *ignored* (the request is traced as if it had none) and counted by the caller —
never an error to the client.

Sampling follows OpenTelemetry's ``ParentBased(TraceIdRatioBased(ratio))``: a valid parent
decides by its sampled flag; a request without one is sampled when the low 64 bits of its
(random) trace id fall below ``ratio * 2**64``.  The decision is a pure function of the
trace id, so every service in a trace that uses the same ratio agrees on it.

Pure functions and immutable values: any thread.
"""

from __future__ import annotations

import random
import re
from typing import NamedTuple

__all__ = [
    "SAMPLED",
    "UNSAMPLED_LAST_DIGITS",
    "RatioSampler",
    "TraceParent",
    "format_traceparent",
    "parse_traceparent",
    "quick_flag",
]

#: The ``sampled`` bit of the trace flags.
SAMPLED = 0x01
_LOW64 = (1 << 64) - 1
_HEX = r"[0-9a-f]"
_FIELDS = re.compile(rf"({_HEX}{{2}})-({_HEX}{{32}})-({_HEX}{{16}})-({_HEX}{{2}})")
#: The last hex digit of a ``traceparent`` holds the sampled bit (bit 0 of the flags): these
#: digits say *not sampled*.  Indexing one character allocates nothing (CPython caches them),
#: so this is the reply path's whole look at a header (``quick_flag``).
UNSAMPLED_LAST_DIGITS = frozenset("02468ace")
_SAMPLED_LAST_DIGITS = frozenset("13579bdf")


class TraceParent(NamedTuple):
    """A parsed ``traceparent``: 128-bit trace id, 64-bit parent span id, 8-bit flags."""

    version: int
    trace_id: int
    span_id: int
    flags: int

    @property
    def sampled(self) -> bool:
        """The caller recorded this trace (the ``sampled`` flag)."""
        return bool(self.flags & SAMPLED)

    @property
    def trace_id_hex(self) -> str:
        """The trace id as 32 lower-case hex digits (how logs and backends show it)."""
        return f"{self.trace_id:032x}"


def parse_traceparent(value: str) -> TraceParent | None:
    """``value`` as a ``TraceParent``, or None when it is not a valid header (see the
    module docstring for the rules).  Leading/trailing blanks are tolerated (HTTP OWS)."""
    value = value.strip(" \t")
    if len(value) < 55:
        return None
    m = _FIELDS.match(value)
    if m is None:
        return None
    version = int(m.group(1), 16)
    if version == 0xFF:
        return None
    if version == 0 and len(value) != 55:
        return None
    if len(value) > 55 and value[55] != "-":
        return None
    trace_id, span_id = int(m.group(2), 16), int(m.group(3), 16)
    if trace_id == 0 or span_id == 0:
        return None
    return TraceParent(version, trace_id, span_id, int(m.group(4), 16))


def format_traceparent(trace_id: int, span_id: int, flags: int = SAMPLED) -> str:
    """A version-00 ``traceparent`` naming span ``span_id`` of trace ``trace_id``."""
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def quick_flag(value: str) -> bool | None:
    """Reply-path pre-check of a header: False when it has a version-00 header's length and
    its last digit says *not sampled* (nothing more is examined: it will not be traced), True
    when that digit says sampled, None otherwise.  True and None both need
    ``parse_traceparent`` (on the side path) before anything trusts the header.  A length
    test and one set lookup, no allocation."""
    if len(value) != 55:
        return None
    last = value[54]
    if last in UNSAMPLED_LAST_DIGITS:
        return False
    return True if last in _SAMPLED_LAST_DIGITS else None


class RatioSampler:
    """Head sampling of requests that carry no (valid) parent: ``ratio`` in [0, 1].

    ``root()`` draws the low 64 bits of a new trace id and returns them when the trace is
    sampled, else 0 — on the reply path that is one C call and one comparison.  ``sampled``
    answers for a given trace id (the same rule).  Owner: any one thread (``random`` is
    shared but thread-safe).
    """

    def __init__(self, ratio: float) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"a sampling ratio is in [0, 1], got {ratio!r}")
        self.ratio = ratio
        #: A trace is sampled when ``trace_id & (2**64 - 1) < bound`` (OpenTelemetry's rule).
        self.bound = round(ratio * (1 << 64))
        self._bits = random.getrandbits

    def sampled(self, trace_id: int) -> bool:
        """Whether a root trace with this id is sampled."""
        return (trace_id & _LOW64) < self.bound

    def root(self) -> int:
        """Low 64 bits of a sampled new trace id, or 0 when the new trace is not sampled."""
        low = self._bits(64)
        return low if low < self.bound else 0

    def new_trace_id(self, low: int) -> int:
        """A full 128-bit trace id whose low half is ``low`` (the high half random)."""
        return (self._bits(64) << 64) | low or 1
