"""Reading and verifying an audit directory (``tailguard audit verify``).

``verify(directory, key)`` walks every segment in order, recomputes the MAC chain and checks
the structure: magic and version, one service, consecutive segment numbers, consecutive
sequence numbers, a closing checkpoint on every segment but the newest.  It never stops at
a "probably fine": the report names the first bad position (segment file, entry index, byte
offset) and why.  A wrong key fails on the first entry.  ``read_entries`` is the same walk
for readers (replay, recovery) that want the records.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from tailguard.audit.format import (
    LEN,
    MAC_BYTES,
    MAGIC,
    VERSION,
    ZERO_MAC,
    Checkpoint,
    DecisionRecord,
    Dropped,
    Entry,
    Header,
    mac,
)

__all__ = ["Problem", "VerifyReport", "read_entries", "segments", "verify"]

_DECODER = msgspec.msgpack.Decoder(Entry)


@dataclass(frozen=True)
class Problem:
    """Where verification failed: segment file, entry index in it, byte offset, reason."""

    segment: str
    entry: int
    offset: int
    reason: str

    def __str__(self) -> str:
        return f"{self.segment}: entry {self.entry} at byte {self.offset}: {self.reason}"


@dataclass
class VerifyReport:
    """The outcome: ``ok`` when nothing is wrong (``warnings`` may still say the newest
    segment was not closed: the writer died, records in its fsync window may be missing)."""

    ok: bool = True
    service: str = ""
    segments: int = 0
    records: int = 0
    dropped: int = 0
    last_seq: int = -1
    problem: Problem | None = None
    warnings: list[str] = field(default_factory=list)
    last_mac: bytes = ZERO_MAC
    #: (segment path, byte offset after the last verified entry) of the newest segment.
    tail: tuple[Path, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"ok": self.ok, "service": self.service, "segments": self.segments,
                "records": self.records, "dropped": self.dropped, "last_seq": self.last_seq,
                "problem": None if self.problem is None else str(self.problem),
                "warnings": list(self.warnings)}


def segments(directory: str | Path) -> list[Path]:
    """The segment files of ``directory``, oldest first."""
    return sorted(Path(directory).glob("segment-*.tgaudit"))


def read_entries(path: Path) -> Iterator[tuple[int, int, bytes, bytes]]:
    """(index, offset, payload, mac) of each complete entry of one segment; a torn tail ends
    the iteration (the caller compares the last offset with the file size)."""
    data = path.read_bytes()
    pos, i = 0, 0
    while pos + LEN.size <= len(data):
        (n,) = LEN.unpack_from(data, pos)
        end = pos + LEN.size + n + MAC_BYTES
        if end > len(data):
            return
        yield i, pos, data[pos + LEN.size : pos + LEN.size + n], data[end - MAC_BYTES : end]
        pos, i = end, i + 1


def verify(directory: str | Path, key: bytes, service: str | None = None) -> VerifyReport:
    """Verify every segment of ``directory`` with ``key`` (see the module docstring)."""
    report = VerifyReport()
    files = segments(directory)
    if not files:
        return _fail(report, Problem(str(directory), 0, 0, "no audit segments"))
    prev = ZERO_MAC
    for k, path in enumerate(files):
        report.segments += 1
        name = path.name
        closed = False
        count = 0
        end_offset = 0
        for i, offset, payload, tag in read_entries(path):
            where = (name, i, offset)
            if closed:
                return _fail(report, Problem(*where, "entry after the closing checkpoint"))
            if mac(key, prev, payload) != tag:
                return _fail(report, Problem(*where, "MAC mismatch: the entry was modified, inserted, "
                                             "deleted or reordered, or the key is wrong"))
            prev = tag
            try:
                entry = _DECODER.decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                return _fail(report, Problem(*where, f"undecodable entry: {exc}"))
            end_offset = offset + LEN.size + len(payload) + MAC_BYTES
            count += 1
            problem = _check(report, entry, i, k, service)
            if problem is not None:
                return _fail(report, Problem(*where, problem))
            if type(entry) is Checkpoint and entry.closing:
                if entry.entries != count - 1:
                    return _fail(report, Problem(*where, f"checkpoint counts {entry.entries} entries, "
                                                 f"the segment holds {count - 1}"))
                closed = True
        size = path.stat().st_size
        if count == 0:
            return _fail(report, Problem(name, 0, 0, "empty or unreadable segment"))
        if end_offset < size:
            if k < len(files) - 1:
                return _fail(report, Problem(name, count, end_offset, "truncated entry"))
            report.warnings.append(f"{name}: torn last entry at byte {end_offset} "
                                   "(the writer died mid-write)")
        if not closed:
            if k < len(files) - 1:
                return _fail(report, Problem(name, count, end_offset,
                                             "segment ends without its closing checkpoint (truncated)"))
            report.warnings.append(f"{name}: not closed (the writer died or is still writing)")
        report.tail = (path, end_offset)
    report.last_mac = prev
    return report


def _check(report: VerifyReport, entry: Entry, i: int, k: int, service: str | None) -> str | None:
    t = type(entry)
    if (i == 0) != (t is Header):
        return "a segment must start with its header, and only there"
    if t is Header:
        assert isinstance(entry, Header)
        if entry.magic != MAGIC or entry.version != VERSION:
            return f"not a tailguard audit segment of version {VERSION}"
        if entry.segment != k:
            return f"segment number {entry.segment}, expected {k} (a segment is missing or out of order)"
        if k == 0:
            report.service = entry.service
            if service is not None and entry.service != service:
                return f"segment of service {entry.service!r}, expected {service!r}"
        elif entry.service != report.service:
            return f"segment of service {entry.service!r} among segments of {report.service!r}"
        if entry.first_seq != report.last_seq + 1:
            return f"first sequence {entry.first_seq}, expected {report.last_seq + 1}"
        return None
    if t is DecisionRecord or t is Dropped:
        assert isinstance(entry, DecisionRecord | Dropped)
        if entry.seq != report.last_seq + 1:
            return f"sequence {entry.seq}, expected {report.last_seq + 1}"
        report.last_seq = entry.seq
        if t is DecisionRecord:
            report.records += 1
        else:
            assert isinstance(entry, Dropped)
            report.dropped += entry.count
    return None


def _fail(report: VerifyReport, problem: Problem) -> VerifyReport:
    report.ok = False
    report.problem = problem
    return report
