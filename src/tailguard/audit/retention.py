"""Retention: remove whole old segments and leave an anchor the remaining chain verifies from.

``Retention(keep_days, keep_segments)`` says which of the oldest segments may go: closed
ones, never the newest, older than ``keep_days`` (their closing checkpoint is older) and
beyond the newest ``keep_segments`` — a segment stays if either policy keeps it.  ``cut``
writes the anchor for the new first segment (``tailguard.audit.anchor``), then deletes.
``retain`` is the command (``tailguard audit retain``): it verifies the whole log first
and refuses to cut one that does not verify; the writer applies its ``Retention`` itself
after each segment rotation, on its side path, from what it already knows.

Owner: the caller's thread; one cut at a time per directory.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tailguard.audit.anchor import fsync_dir, write_anchor
from tailguard.audit.format import Anchor, segment_number
from tailguard.audit.keys import Signer
from tailguard.audit.problems import AuditError, AuditInvalid, Code
from tailguard.audit.verify import SegmentInfo, segments, verify

__all__ = ["RetainReport", "Retention", "cut", "retain"]

_DAY_NS = 86_400 * 10**9


@dataclass(frozen=True)
class Retention:
    """Keep segments younger than ``keep_days`` (days, float) and the newest ``keep_segments``
    (None: that policy keeps nothing by itself; both None: keep everything)."""

    keep_days: float | None = None
    keep_segments: int | None = None

    @property
    def active(self) -> bool:
        """Some policy is set."""
        return self.keep_days is not None or self.keep_segments is not None

    def removable(self, infos: Sequence[SegmentInfo], now_wall_ns: int) -> int:
        """How many of the oldest of ``infos`` (oldest first; the last is the newest segment)
        may be removed at wall time ``now_wall_ns``."""
        if not self.active:
            return 0
        limit = len(infos) - 1
        if self.keep_segments is not None:
            limit = min(limit, len(infos) - max(self.keep_segments, 1))
        cutoff = None if self.keep_days is None else now_wall_ns - round(self.keep_days * _DAY_NS)
        n = 0
        while n < limit and infos[n].closed and (cutoff is None or infos[n].closed_wall_ns < cutoff):
            n += 1
        return n


@dataclass
class RetainReport:
    """What a retention run removed, and where the chain now starts."""

    removed: list[str] = field(default_factory=list)
    first_segment: int = 0
    first_seq: int = 0
    removed_records: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"ok": True, "removed": list(self.removed), "first_segment": self.first_segment,
                "first_seq": self.first_seq, "removed_records": self.removed_records}


def cut(directory: Path, key: bytes, infos: Sequence[SegmentInfo], n: int, *, service: str,
        log_id: bytes, previous: Anchor | None, signer: Signer | None, now_wall_ns: int) -> Anchor:
    """Remove the ``n`` oldest of ``infos`` (verified, consecutive, closed) behind a new
    anchor; returns the anchor."""
    last = infos[n - 1]
    removed = (0 if previous is None else previous.removed_records) + sum(i.records for i in infos[:n])
    anchor = write_anchor(directory, key, Anchor(service, log_id, last.number + 1, last.next_seq,
                                                 last.last_mac, removed, last.closed_wall_ns, now_wall_ns),
                          signer)
    for info in infos[:n]:
        info.path.unlink(missing_ok=True)
    fsync_dir(directory)
    return anchor


def retain(directory: str | Path, key: bytes, policy: Retention, *, signer: Signer | None = None,
           service: str | None = None, now_wall_ns: int | None = None) -> RetainReport:
    """Apply ``policy`` to the log in ``directory`` (see the module docstring)."""
    d = Path(directory)
    check = verify(d, key, service)
    if not check.ok:
        assert check.problem is not None
        raise AuditInvalid("the audit log does not verify, refusing to remove segments", check.problem)
    if signer is None and any(i.header.signer for i in check.infos):
        raise AuditError("the log is signed: give its signing key so the retention anchor is signed too",
                         Code.UNSIGNED)
    report = RetainReport(first_segment=check.first_segment, first_seq=check.infos[0].header.first_seq)
    for path in segments(d):  # left by an interrupted cut: they precede the anchor
        number = segment_number(path.name)
        if number is not None and number < check.first_segment:
            path.unlink()
            report.removed.append(path.name)
    now = time.time_ns() if now_wall_ns is None else now_wall_ns
    n = policy.removable(check.infos, now)
    if n:
        a = cut(d, key, check.infos, n, service=check.service, log_id=check.log_id,
                previous=check.anchor, signer=signer, now_wall_ns=now)
        report.removed.extend(i.path.name for i in check.infos[:n])
        report.first_segment, report.first_seq, report.removed_records = (
            a.first_segment, a.first_seq, a.removed_records)
    elif check.anchor is not None:
        report.removed_records = check.anchor.removed_records
    return report
