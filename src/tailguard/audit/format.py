"""The audit log's on-disk format: segments of MAC-chained entries (see docs/audit.md).

A segment file ``segment-NNNNNNNN.tgaudit`` is a sequence of entries::

    u32 big-endian payload length | payload (msgpack, one tagged array) | 16-byte MAC

``MAC_i = BLAKE2b-128(key, MAC_{i-1} || payload_i)`` (BLAKE2b in keyed mode, a MAC by
construction).  The first entry of a segment is its ``Header``, chained to the last MAC of
the previous segment (16 zero bytes before segment 0, the anchor's ``chain_mac`` after a
retention cut), so modifying, inserting, deleting or reordering any entry — or a whole
segment — breaks the chain at the first bad position, and without the key the chain cannot
be recomputed.  ``Checkpoint`` entries (every N records or T seconds, and the closing one)
carry the chain MAC so far and the SHA-256 of the segment's bytes before them, optionally
signed with Ed25519 over ``checkpoint_message`` so a holder of the public key alone can
check them.  A retention cut leaves an ``Anchor`` in ``retention-anchor.tgaudit``.

Version 2 appended fields to version 1's arrays (all with defaults), so one decoder reads
both versions.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import msgspec

__all__ = ["ANCHOR_NAME", "ANCHOR_PREV", "MAC_BYTES", "MAGIC", "NO_AGE", "READABLE", "Anchor",
           "Checkpoint", "DecisionRecord", "Dropped", "Entry", "Header", "VERSION", "ZERO_MAC",
           "anchor_message", "checkpoint_message", "key_id", "mac", "segment_name", "segment_number"]

MAGIC = "tailguard-audit"
VERSION = 2
#: Versions this code reads (a log may go up in version from one segment to the next).
READABLE = (1, 2)
MAC_BYTES = 16
ZERO_MAC = bytes(MAC_BYTES)
#: The "previous MAC" of the anchor entry: 16 fixed bytes, so an anchor MAC can never be
#: mistaken for a chain MAC.
ANCHOR_PREV = b"tailguard-anchor"
ANCHOR_NAME = "retention-anchor.tgaudit"
#: The age recorded for a stored view whose row was never written (or an unknown entity).
NO_AGE = -1
LEN = struct.Struct(">I")
_PREFIX = "segment-"
_SUFFIX = ".tgaudit"


class Header(msgspec.Struct, array_like=True, tag=0):
    """First entry of every segment.  Version 2 adds: ``log_id`` (16 random bytes, the same
    in every segment of one log), ``key_id`` (``key_id(K)``: which MAC key), ``signer`` (the
    Ed25519 public key that signs its checkpoints; empty: unsigned), ``views`` (stored view
    names, the column order of ``DecisionRecord.ages_ns``) and ``pii`` (entity -> mode)."""

    magic: str
    version: int
    service: str
    segment: int
    wall_ns: int
    first_seq: int
    log_id: bytes = b""
    key_id: bytes = b""
    signer: bytes = b""
    views: list[str] = []
    pii: dict[str, str] = {}


class DecisionRecord(msgspec.Struct, array_like=True, tag=1, gc=False):
    """One decision: when (wall ns since the epoch, 1 ns resolution; monotonic ns), what was
    asked (entity keys — PII replaced, see ``tailguard.audit.pii`` — and priority), what it was
    decided on (the exact float32 feature rows, ``width`` per row, and each stored view's age
    in ns, int64 little-endian, rows by views, ``NO_AGE`` when never written) and by what (model
    label and content hash, rung per row), what came out (float64 outputs, ``n_outputs`` per
    row; flags per row) and the stage timings (ns)."""

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
    model_hash: str = ""
    ages_ns: bytes = b""


class Dropped(msgspec.Struct, array_like=True, tag=2):
    """``count`` decisions were not logged (the buffer was full): the gap itself is recorded."""

    seq: int
    wall_ns: int
    count: int


class Checkpoint(msgspec.Struct, array_like=True, tag=3):
    """``seq``: the next sequence number; ``entries``: entries before it in this segment
    (header included); ``closing`` ends the segment.  Version 2 adds ``chain_mac`` (the MAC of
    the entry before it), ``digest`` (SHA-256 of the segment's bytes before it), and, when
    signed, ``signer`` (Ed25519 public key) and ``signature`` over ``checkpoint_message``."""

    seq: int
    wall_ns: int
    entries: int
    closing: bool
    chain_mac: bytes = b""
    digest: bytes = b""
    signer: bytes = b""
    signature: bytes = b""


class Anchor(msgspec.Struct, array_like=True, tag=4):
    """What a retention cut removed: every segment before ``first_segment``, whose last
    entry's MAC was ``chain_mac`` and whose records ended before ``first_seq``;
    ``removed_records`` in all, the newest closed at ``removed_until_wall_ns``; cut at
    ``wall_ns``.  MAC-ed like an entry (previous MAC ``ANCHOR_PREV``), optionally signed
    over ``anchor_message``."""

    service: str
    log_id: bytes
    first_segment: int
    first_seq: int
    chain_mac: bytes
    removed_records: int
    removed_until_wall_ns: int
    wall_ns: int
    signer: bytes = b""
    signature: bytes = b""


Entry = Header | DecisionRecord | Dropped | Checkpoint


def mac(key: bytes, prev: bytes, payload: bytes | memoryview) -> bytes:
    """The chain MAC of one entry."""
    h = hashlib.blake2b(digest_size=MAC_BYTES, key=key)
    h.update(prev)
    h.update(payload)
    return h.digest()


def key_id(key: bytes) -> bytes:
    """8 bytes naming a MAC key without revealing it: BLAKE2b-64 keyed with it over
    ``b"tailguard-audit key id"``."""
    return hashlib.blake2b(b"tailguard-audit key id", digest_size=8, key=key).digest()


def _service_log(service: str, log_id: bytes) -> bytes:
    s = service.encode()
    return struct.pack(">H", len(s)) + s + log_id


def checkpoint_message(service: str, log_id: bytes, segment: int, ck: Checkpoint) -> bytes:
    """The bytes an Ed25519 checkpoint signature covers (fixed layout, docs/audit.md)."""
    return (b"tailguard-audit/checkpoint\n" + _service_log(service, log_id)
            + struct.pack(">QQQB", segment, ck.seq, ck.entries, ck.closing) + ck.chain_mac + ck.digest)


def anchor_message(a: Anchor) -> bytes:
    """The bytes an Ed25519 anchor signature covers (fixed layout, docs/audit.md)."""
    return (b"tailguard-audit/anchor\n" + _service_log(a.service, a.log_id)
            + struct.pack(">QQ", a.first_segment, a.first_seq) + a.chain_mac
            + struct.pack(">Qqq", a.removed_records, a.removed_until_wall_ns, a.wall_ns))


def segment_name(index: int) -> str:
    """File name of segment ``index``."""
    return f"{_PREFIX}{index:08d}{_SUFFIX}"


def segment_number(name: str) -> int | None:
    """The segment number a file name claims (None when it is not a segment name)."""
    digits = name[len(_PREFIX) : -len(_SUFFIX)]
    if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX) and digits.isdigit()):
        return None
    return int(digits)
