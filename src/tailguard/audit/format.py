"""The audit log's on-disk format: segments of MAC-chained entries (see docs/audit.md).

A segment file ``segment-NNNNNNNN.tgaudit`` is a sequence of entries::

    u32 big-endian payload length | payload (msgpack, one tagged array) | 16-byte MAC

``MAC_i = BLAKE2b-128(key, MAC_{i-1} || payload_i)`` (BLAKE2b in keyed mode, a MAC by
construction).  The first entry of a segment is its ``Header``, chained to the last MAC of
the previous segment (16 zero bytes before segment 0), so modifying, inserting, deleting or
reordering any entry — or a whole segment — breaks the chain at the first bad position, and
without the key the chain cannot be recomputed.  A segment ends with a ``Checkpoint`` whose
``closing`` is true; only the newest segment may lack one (the process died: records inside
the fsync window may be missing, the chain up to the last complete entry still verifies).
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import msgspec

__all__ = ["MAC_BYTES", "MAGIC", "Checkpoint", "DecisionRecord", "Dropped", "Entry", "Header",
           "VERSION", "ZERO_MAC", "mac", "segment_name"]

MAGIC = "tailguard-audit"
VERSION = 1
MAC_BYTES = 16
ZERO_MAC = bytes(MAC_BYTES)
LEN = struct.Struct(">I")


class Header(msgspec.Struct, array_like=True, tag=0):
    """First entry of every segment."""

    magic: str
    version: int
    service: str
    segment: int
    wall_ns: int
    first_seq: int


class DecisionRecord(msgspec.Struct, array_like=True, tag=1, gc=False):
    """One decision: when (wall ns since the epoch, 1 ns resolution; monotonic ns), what was
    asked (entity keys, priority), what it was decided on (the exact float32 feature rows,
    ``width`` per row) and by what (model version label, rung per row), what came out
    (float64 outputs, ``n_outputs`` per row; flags per row) and the stage timings (ns)."""

    seq: int
    wall_ns: int
    mono_ns: int
    keys: Any
    priority: str
    model_version: str
    rungs: list[int]
    flags: list[int]
    width: int
    features: bytes
    n_outputs: int
    outputs: bytes
    timings_ns: list[int]
    request_id: str = ""


class Dropped(msgspec.Struct, array_like=True, tag=2):
    """``count`` decisions were not logged (the buffer was full): the gap itself is recorded."""

    seq: int
    wall_ns: int
    count: int


class Checkpoint(msgspec.Struct, array_like=True, tag=3):
    """Records so far in this segment; ``closing`` ends the segment."""

    seq: int
    wall_ns: int
    entries: int
    closing: bool


Entry = Header | DecisionRecord | Dropped | Checkpoint


def mac(key: bytes, prev: bytes, payload: bytes) -> bytes:
    """The chain MAC of one entry."""
    h = hashlib.blake2b(digest_size=MAC_BYTES, key=key)
    h.update(prev)
    h.update(payload)
    return h.digest()


def segment_name(index: int) -> str:
    """File name of segment ``index``."""
    return f"segment-{index:08d}.tgaudit"
