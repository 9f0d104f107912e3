"""How an audit log lies on a JetStream stream, and reading whole entries from segment files
(shared by the shipper, ``tailguard.audit.offbox``, and the puller, ``tailguard.audit.pull``).

Subject ``tailguard.audit.<service>.<worker>``; a message holds consecutive complete entries
of one segment, byte for byte, with headers naming the segment (``Tailguard-Segment``), the
byte offset of its first entry (``Tailguard-Offset``), that entry's index in the segment
(``Tailguard-Entry``) and the number of entries (``Tailguard-Entries``).  Entries are read
by their length prefix only (``u32 len | payload | 16-byte mac``, see
``tailguard.audit.format``): a partly written entry is never read.

Pure functions and constants; no thread ownership.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from tailguard.audit.format import LEN, MAC_BYTES, Header, segment_name
from tailguard.errors import TailguardError

__all__ = ["AUDIT_SUBJECTS", "DEFAULT_STREAM", "H_ENTRIES", "H_ENTRY", "H_OFFSET", "H_SEGMENT",
           "SUBJECT_PREFIX", "OffboxError", "Position", "entries_at", "parse_subject", "read_exact",
           "segment_numbers", "service_of", "subject_for"]

DEFAULT_STREAM = "TAILGUARD_AUDIT"
SUBJECT_PREFIX = "tailguard.audit"
AUDIT_SUBJECTS = f"{SUBJECT_PREFIX}.>"
H_SEGMENT = "Tailguard-Segment"
H_OFFSET = "Tailguard-Offset"
H_ENTRY = "Tailguard-Entry"
H_ENTRIES = "Tailguard-Entries"
_TOKEN = re.compile(r"[A-Za-z0-9_\-]+")


class OffboxError(TailguardError):
    """The off-box copy cannot go on or cannot be rebuilt: the stream holds another log under
    this subject, a message is not an audit message, a gap or a conflict in the stream."""

    code = "audit_offbox"


@dataclass(frozen=True, order=True)
class Position:
    """Where the next entry starts: segment number, byte offset (ordered by both) and the
    entry's index in its segment."""

    segment: int = 0
    offset: int = 0
    entry: int = field(default=0, compare=False)


def subject_for(service: str, worker: str) -> str:
    """The subject of one worker's log: ``tailguard.audit.<service>.<worker>``."""
    for what, token in (("service", service), ("worker", worker)):
        if not _TOKEN.fullmatch(token):
            raise OffboxError(f"{what} name {token!r} cannot be a NATS subject token "
                              "(letters, digits, '_' and '-' only)")
    return f"{SUBJECT_PREFIX}.{service}.{worker}"


def parse_subject(subject: str) -> tuple[str, str]:
    """(service, worker) of an audit subject."""
    parts = subject.split(".")
    if len(parts) != 4 or ".".join(parts[:2]) != SUBJECT_PREFIX:
        raise OffboxError(f"{subject!r} is not an audit subject ({SUBJECT_PREFIX}.<service>.<worker>)")
    return parts[2], parts[3]


def service_of(directory: Path) -> str:
    """The service named by the header of the log's first segment."""
    first = directory / segment_name(0)
    data, n = entries_at(first, 0, 1 << 16)
    if not n:
        raise OffboxError(f"{directory} holds no audit segment with a header yet; name the service")
    (length,) = LEN.unpack_from(data, 0)
    try:
        header = msgspec.msgpack.decode(data[LEN.size : LEN.size + length], type=Header)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise OffboxError(f"{first}: the first entry is not a segment header: {exc}") from None
    return header.service


def segment_numbers(directory: Path) -> list[int]:
    """The numbers of the segment files in ``directory``, ascending."""
    out = []
    for p in directory.glob("segment-*.tgaudit"):
        with contextlib.suppress(ValueError):
            out.append(int(p.name[len("segment-") : -len(".tgaudit")]))
    return sorted(out)


def entries_at(path: Path, offset: int, max_bytes: int) -> tuple[bytes, int]:
    """The complete entries of segment file ``path`` from byte ``offset``, at most
    ``max_bytes`` of them (but always the first one however large): (bytes, count).
    A missing file, or nothing complete there yet, is (b"", 0)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read(max_bytes)
            pos = count = 0
            while pos + LEN.size <= len(data):
                end = pos + LEN.size + LEN.unpack_from(data, pos)[0] + MAC_BYTES
                if end > len(data):
                    break
                pos, count = end, count + 1
            if count == 0 and len(data) >= LEN.size:  # one entry larger than max_bytes
                size = LEN.size + LEN.unpack_from(data, 0)[0] + MAC_BYTES
                f.seek(offset)
                data = f.read(size)
                return (data, 1) if len(data) == size else (b"", 0)
            return data[:pos], count
    except FileNotFoundError:
        return b"", 0


def read_exact(path: Path, offset: int, size: int) -> bytes:
    """``size`` bytes of ``path`` at ``offset`` (fewer when the file is shorter or missing)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read(size)
    except FileNotFoundError:
        return b""
