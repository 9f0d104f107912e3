"""Reading and verifying an audit directory (``tailguard audit verify``).

``verify(directory, key, service, public_keys=...)`` starts at the retention anchor if there
is one (else at segment 0, 16 zero bytes), walks every segment in order, recomputes the MAC
chain (with the MAC key) and checks the structure: magic and version, one service and one
log id, consecutive segment numbers and file names, consecutive sequence numbers, every
checkpoint's counts, chain MAC and segment digest, a closing checkpoint on every segment but
the newest.  With public keys it also checks every checkpoint and anchor signature (and then
demands them); with the public keys alone it checks all of that but the MACs.  It never
stops at a "probably fine": the report names the first bad position (segment file, entry
index, byte offset), why, and a stable code (``tailguard.audit.problems.Code``).
``read_entries`` is the same walk for readers (replay, recovery, shipping).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from tailguard.audit.anchor import read_anchor
from tailguard.audit.format import (
    ANCHOR_NAME,
    LEN,
    MAC_BYTES,
    MAGIC,
    READABLE,
    ZERO_MAC,
    Anchor,
    Checkpoint,
    DecisionRecord,
    Dropped,
    Entry,
    Header,
    anchor_message,
    checkpoint_message,
    key_id,
    mac,
    segment_name,
    segment_number,
)
from tailguard.audit.keys import check_signature
from tailguard.audit.problems import Code, Problem

__all__ = ["Problem", "SegmentInfo", "VerifyReport", "read_entries", "segments", "verify"]

_DECODER = msgspec.msgpack.Decoder(Entry)


@dataclass
class SegmentInfo:
    """One verified segment: its header, entries, the byte offset after its last complete
    entry, its sequence range, records, whether (and when, wall ns) it was closed, and the
    MAC of its last entry (what the next segment, or a retention anchor, chains from)."""

    number: int
    path: Path
    header: Header
    entries: int = 0
    end_offset: int = 0
    next_seq: int = 0
    records: int = 0
    closed: bool = False
    closed_wall_ns: int = 0
    last_mac: bytes = ZERO_MAC


@dataclass
class VerifyReport:
    """The outcome: ``ok`` when nothing is wrong (``warnings`` may still say the newest
    segment was not closed: the writer died, records in its fsync window may be missing)."""

    ok: bool = True
    service: str = ""
    log_id: bytes = b""
    segments: int = 0
    records: int = 0
    dropped: int = 0
    checkpoints: int = 0
    signed_checkpoints: int = 0
    last_seq: int = -1
    problem: Problem | None = None
    warnings: list[str] = field(default_factory=list)
    last_mac: bytes = ZERO_MAC
    #: (segment path, byte offset after the last verified entry) of the newest segment.
    tail: tuple[Path, int] | None = None
    #: The retention anchor the chain starts from (None: it starts at segment 0).
    anchor: Anchor | None = None
    first_segment: int = 0
    infos: list[SegmentInfo] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"ok": self.ok, "service": self.service, "log_id": self.log_id.hex(),
                "segments": self.segments, "first_segment": self.first_segment,
                "records": self.records, "dropped": self.dropped, "last_seq": self.last_seq,
                "checkpoints": self.checkpoints, "signed_checkpoints": self.signed_checkpoints,
                "removed_records": 0 if self.anchor is None else self.anchor.removed_records,
                "problem": None if self.problem is None else str(self.problem),
                "code": None if self.problem is None else str(self.problem.code),
                "warnings": list(self.warnings)}


def segments(directory: str | Path) -> list[Path]:
    """The segment files of ``directory``, oldest first."""
    return sorted(Path(directory).glob("segment-*.tgaudit"))


def _frames(data: bytes) -> Iterator[tuple[int, int, bytes, bytes]]:
    pos, i = 0, 0
    while pos + LEN.size <= len(data):
        (n,) = LEN.unpack_from(data, pos)
        end = pos + LEN.size + n + MAC_BYTES
        if end > len(data):
            return
        yield i, pos, data[pos + LEN.size : pos + LEN.size + n], data[end - MAC_BYTES : end]
        pos, i = end, i + 1


def read_entries(path: Path) -> Iterator[tuple[int, int, bytes, bytes]]:
    """(index, offset, payload, mac) of each complete entry of one segment; a torn tail ends
    the iteration (the caller compares the last offset with the file size)."""
    return _frames(path.read_bytes())


class _Bad(Exception):
    def __init__(self, where: tuple[str, int, int], reason: str, code: Code) -> None:
        super().__init__(reason)
        self.problem = Problem(*where, reason, code)


class _Walk:
    """The state of one verification (module docstring)."""

    def __init__(self, report: VerifyReport, key: bytes | None, service: str | None,
                 public_keys: tuple[bytes, ...]) -> None:
        self.r = report
        self.key = key
        self.kid = None if key is None else key_id(key)
        self.service = service
        self.pks = public_keys
        self.prev = ZERO_MAC
        self.version = 0

    def anchor(self, directory: Path) -> None:
        found = read_anchor(directory, self.key)
        if isinstance(found, str):
            raise _Bad((directory.name, 0, 0), found, Code.ANCHOR_INVALID)
        if found is None:
            return
        a = self.r.anchor = found
        where = (ANCHOR_NAME, 0, 0)
        self._identity(a.service, a.log_id, where)
        self._signature(a.signer, a.signature, anchor_message(a), where, "the retention anchor")
        self.r.first_segment, self.prev, self.r.last_seq = a.first_segment, a.chain_mac, a.first_seq - 1

    def _identity(self, service: str, log_id: bytes, where: tuple[str, int, int]) -> None:
        if self.service is not None and service != self.service:
            raise _Bad(where, f"segment of service {service!r}, expected {self.service!r}", Code.FOREIGN)
        if self.r.service and service != self.r.service:
            raise _Bad(where, f"segment of service {service!r} among segments of {self.r.service!r}",
                       Code.FOREIGN)
        self.r.service = service
        if log_id and self.r.log_id and log_id != self.r.log_id:
            raise _Bad(where, f"segment of another log (log id {log_id.hex()}, this log is "
                       f"{self.r.log_id.hex()})", Code.FOREIGN)
        self.r.log_id = self.r.log_id or log_id

    def _signature(self, signer: bytes, signature: bytes, message: bytes,
                   where: tuple[str, int, int], what: str) -> bool:
        if not signature:
            if self.pks:
                raise _Bad(where, f"{what} is not signed (a public key was given)", Code.UNSIGNED)
            return False
        if self.pks:
            if signer not in self.pks:
                raise _Bad(where, f"{what} is signed by key {signer.hex()[:16]}…, not by a public key "
                           "given", Code.WRONG_PUBLIC_KEY)
            if not check_signature(signer, signature, message):
                raise _Bad(where, f"{what}: the signature does not verify (forged or modified)",
                           Code.BAD_SIGNATURE)
        return True

    def segment(self, path: Path, number: int, newest: bool) -> None:
        data = path.read_bytes()
        name = path.name
        digest, hashed = hashlib.sha256(), 0
        info: SegmentInfo | None = None
        covered = 0  # byte offset up to which a signed checkpoint vouches for the segment
        for i, offset, payload, tag in _frames(data):
            where = (name, i, offset)
            if info is not None and info.closed:
                raise _Bad(where, "entry after the closing checkpoint", Code.STRUCTURE)
            error = ""
            try:
                entry: Entry | None = _DECODER.decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                entry, error = None, str(exc)
            if i == 0 and isinstance(entry, Header):
                self._header(entry, number, where)
            if self.key is not None and mac(self.key, self.prev, payload) != tag:
                raise _Bad(where, "MAC mismatch: the entry was modified, inserted, deleted or reordered"
                           + (", or the key is wrong" if i == 0 and self.kid is None else ""),
                           Code.MAC_MISMATCH)
            if entry is None:
                raise _Bad(where, f"undecodable entry: {error}", Code.CORRUPT)
            if (i == 0) != (type(entry) is Header):
                raise _Bad(where, "a segment must start with its header, and only there", Code.STRUCTURE)
            if isinstance(entry, Header):
                info = SegmentInfo(number, path, entry, next_seq=entry.first_seq)
            elif isinstance(entry, DecisionRecord | Dropped):
                assert info is not None
                self._seq(entry.seq, where)
                if isinstance(entry, DecisionRecord):
                    self.r.records += 1
                    info.records += 1
                else:
                    self.r.dropped += entry.count
            else:
                assert info is not None and isinstance(entry, Checkpoint)
                digest.update(data[hashed:offset])
                hashed = offset
                if self._checkpoint(entry, info, i, where, digest.digest()):
                    covered = offset + LEN.size + len(payload) + MAC_BYTES
            assert info is not None
            self.prev = tag
            info.entries = i + 1
            info.end_offset = offset + LEN.size + len(payload) + MAC_BYTES
            info.next_seq = self.r.last_seq + 1
            info.last_mac = tag
        if info is None:
            raise _Bad((name, 0, 0), "empty or unreadable segment", Code.TRUNCATED)
        where = (name, info.entries, info.end_offset)
        if info.end_offset < len(data):
            if not newest:
                raise _Bad(where, "truncated entry", Code.TRUNCATED)
            self.r.warnings.append(f"{name}: torn last entry at byte {info.end_offset} "
                                   "(the writer died mid-write)")
        if not info.closed:
            if not newest:
                raise _Bad(where, "segment ends without its closing checkpoint (truncated)", Code.TRUNCATED)
            self.r.warnings.append(f"{name}: not closed (the writer died or is still writing)")
        if self.key is None and covered < info.end_offset:
            self.r.warnings.append(f"{name}: bytes {covered}..{info.end_offset} follow the last signed "
                                   "checkpoint: without the MAC key nothing vouches for them")
        self.r.infos.append(info)
        self.r.segments += 1
        self.r.tail = (path, info.end_offset)

    def _header(self, h: Header, number: int, where: tuple[str, int, int]) -> None:
        if h.magic != MAGIC or h.version not in READABLE:
            raise _Bad(where, f"not a tailguard audit segment of a version this code reads {READABLE}",
                       Code.VERSION)
        if h.version < self.version:
            raise _Bad(where, f"version {h.version} after a segment of version {self.version}", Code.VERSION)
        self.version = h.version
        if self.kid is not None and h.key_id and h.key_id != self.kid:
            raise _Bad(where, f"written with another MAC key (key id {h.key_id.hex()}, the key given has "
                       f"{self.kid.hex()})", Code.WRONG_KEY)
        self._identity(h.service, h.log_id, where)
        if h.segment != number:
            raise _Bad(where, f"segment number {h.segment}, expected {number} (a segment is missing or "
                       "out of order)", Code.SEQUENCE)
        if h.first_seq != self.r.last_seq + 1:
            raise _Bad(where, f"first sequence {h.first_seq}, expected {self.r.last_seq + 1}", Code.SEQUENCE)
        if self.pks and not h.signer:
            raise _Bad(where, "the segment is not signed (a public key was given)", Code.UNSIGNED)

    def _seq(self, seq: int, where: tuple[str, int, int]) -> None:
        if seq != self.r.last_seq + 1:
            raise _Bad(where, f"sequence {seq}, expected {self.r.last_seq + 1}", Code.SEQUENCE)
        self.r.last_seq = seq

    def _checkpoint(self, ck: Checkpoint, info: SegmentInfo, i: int, where: tuple[str, int, int],
                    digest: bytes) -> bool:
        if ck.seq != self.r.last_seq + 1:
            raise _Bad(where, f"checkpoint at sequence {ck.seq}, expected {self.r.last_seq + 1}",
                       Code.SEQUENCE)
        if ck.entries != i:
            raise _Bad(where, f"checkpoint counts {ck.entries} entries, the segment holds {i}",
                       Code.STRUCTURE)
        v2 = info.header.version >= 2
        if (v2 or ck.chain_mac) and ck.chain_mac != self.prev:
            raise _Bad(where, "checkpoint chain MAC differs from the chain", Code.CHECKPOINT)
        if (v2 or ck.digest) and ck.digest != digest:
            raise _Bad(where, "checkpoint digest differs from the segment's bytes before it", Code.CHECKPOINT)
        self.r.checkpoints += 1
        if ck.closing:
            info.closed, info.closed_wall_ns = True, ck.wall_ns
        if not ck.signature and info.header.signer:
            raise _Bad(where, "checkpoint not signed in a segment whose header names a signer", Code.UNSIGNED)
        msg = checkpoint_message(info.header.service, info.header.log_id, info.number, ck)
        signed = self._signature(ck.signer, ck.signature, msg, where, "checkpoint")
        self.r.signed_checkpoints += signed
        return signed


def verify(directory: str | Path, key: bytes | None, service: str | None = None, *,
           public_keys: Sequence[bytes] = ()) -> VerifyReport:
    """Verify ``directory`` with the MAC ``key`` and/or Ed25519 ``public_keys`` (see the
    module docstring); ``service``, when given, is the service the log must belong to."""
    report = VerifyReport()
    d = Path(directory)
    if key is None and not public_keys:
        return _fail(report, Problem(str(d), 0, 0, "neither a MAC key nor a public key to verify with",
                                     Code.NO_KEY))
    walk = _Walk(report, key, service, tuple(public_keys))
    try:
        walk.anchor(d)
        numbered = []
        for path in segments(d):
            number = segment_number(path.name)
            if number is None:
                raise _Bad((path.name, 0, 0), "not a segment file name", Code.CORRUPT)
            if number < report.first_segment:
                report.warnings.append(f"{path.name} precedes the retention anchor (an interrupted "
                                       "retention: `tailguard audit retain` removes it)")
            else:
                numbered.append((number, path))
        if not numbered:
            raise _Bad((str(d), 0, 0), "no audit segments", Code.NO_SEGMENTS)
        for k, (number, path) in enumerate(numbered):
            expected = report.first_segment + k
            if number != expected:
                code = Code.ANCHOR_MISSING if k == 0 and report.anchor is None else Code.SEQUENCE
                missing = (f"segments {report.first_segment}..{number - 1} were removed without a "
                           "retention anchor" if code is Code.ANCHOR_MISSING else
                           f"{segment_name(expected)} is missing")
                raise _Bad((path.name, 0, 0), missing, code)
            walk.segment(path, number, k == len(numbered) - 1)
    except _Bad as bad:
        return _fail(report, bad.problem)
    if key is not None and not public_keys and report.signed_checkpoints:
        report.warnings.append(f"{report.signed_checkpoints} checkpoint signatures not checked "
                               "(no public key given)")
    report.last_mac = walk.prev
    return report


def _fail(report: VerifyReport, problem: Problem) -> VerifyReport:
    report.ok = False
    report.problem = problem
    return report
