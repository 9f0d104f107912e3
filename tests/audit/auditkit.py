"""Helpers of the audit tests: decisions, entries, re-chaining a log as a key holder would."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import msgspec
from toyservice import CTX

from tailguard import Service
from tailguard.audit.format import LEN, Checkpoint, DecisionRecord, Entry, Header, mac
from tailguard.audit.verify import read_entries, segments

KEY = bytes(range(32))
DECODER = msgspec.msgpack.Decoder(Entry)
ENCODER = msgspec.msgpack.Encoder()


def decide(service: Service, n: int, key: str | None = None) -> None:
    """``n`` single decisions (keys k0, k1... or always ``key``)."""
    for i in range(n):
        service.engine.predict(key or f"k{i}", CTX)


def decoded(path: Path) -> list[Any]:
    """Every entry of one segment, decoded."""
    return [DECODER.decode(p) for _, _, p, _ in read_entries(path)]


def records(directory: Path) -> list[DecisionRecord]:
    """Every decision record of a log, oldest first."""
    return [e for path in segments(directory) for e in decoded(path) if type(e) is DecisionRecord]


def rewrite(path: Path, parts: list[tuple[bytes, bytes]]) -> None:
    """Write a segment from (payload, mac) pairs, as they are."""
    path.write_bytes(b"".join(LEN.pack(len(p)) + p + m for p, m in parts))


def rechain(
    directory: Path, entries: dict[str, list[Any]], key: bytes = KEY, first_prev: bytes = bytes(16)
) -> None:
    """Rewrite whole segments from entries, recomputing every MAC, checkpoint chain MAC and
    digest with ``key`` — what a holder of the MAC key (not of the signing key) can forge.
    ``entries`` maps segment file names, oldest first, to their entries."""
    prev = first_prev
    for name, items in entries.items():
        out = bytearray()
        for e in items:
            if type(e) is Checkpoint and e.digest:
                e.chain_mac, e.digest = prev, hashlib.sha256(bytes(out)).digest()
            payload = ENCODER.encode(e)
            prev = mac(key, prev, payload)
            out += LEN.pack(len(payload)) + payload + prev
        (directory / name).write_bytes(bytes(out))


def all_entries(directory: Path) -> dict[str, list[Any]]:
    """Segment file name -> decoded entries, for ``rechain``."""
    return {p.name: decoded(p) for p in segments(directory)}


def header(directory: Path, index: int = 0) -> Header:
    """The header of the ``index``-th segment file."""
    h = decoded(segments(directory)[index])[0]
    assert type(h) is Header
    return h
