"""Rebuild audit segment files from the off-box copy on NATS JetStream (``tailguard audit pull``).

Reads every message of ``tailguard.audit.<service>.*`` (or of one worker) in stream order and
writes its bytes at the segment and offset its headers name, so the copy is the original
byte for byte and ``tailguard audit verify`` checks it with the same key.  A message wholly
inside what the copy already holds must equal those bytes (it is then counted as a
duplicate and skipped, which also makes a second pull into the same directory incremental);
a message starting past the end of its segment, or a new segment whose predecessor is
missing (but for the first segment a copy holds: a log cut by retention before it was
shipped starts later), is a gap; bytes that differ are a conflict: both raise ``OffboxError``.

Runs on the calling thread (``pull``) or the running loop (``pull_async``).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec
import nats.js.errors

from tailguard.audit.format import Checkpoint, segment_name
from tailguard.audit.offbox import NATS_FAILURES, connect
from tailguard.audit.offbox_layout import (
    DEFAULT_STREAM,
    H_ENTRIES,
    H_OFFSET,
    H_SEGMENT,
    SUBJECT_PREFIX,
    OffboxError,
    parse_subject,
    read_exact,
    subject_for,
)
from tailguard.audit.verify import read_entries

__all__ = ["PullReport", "pull", "pull_async"]


@dataclass
class PullReport:
    """What was rebuilt: per worker its directory, messages, entries, bytes written and
    segments; messages skipped as duplicates."""

    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    duplicates: int = 0

    @property
    def ok(self) -> bool:
        """Something was pulled."""
        return bool(self.workers)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"ok": self.ok, "workers": self.workers, "duplicates": self.duplicates}


def pull(url: str, service: str, outdir: str | Path, *, stream: str = DEFAULT_STREAM,
         worker: str | None = None) -> PullReport:
    """Rebuild ``service``'s logs from ``stream`` at ``url`` into ``outdir/<worker>/`` (into
    ``outdir`` itself when one ``worker`` is named).  Blocks the calling thread."""
    return asyncio.run(pull_async(url, service, outdir, stream=stream, worker=worker))


async def pull_async(url: str, service: str, outdir: str | Path, *, stream: str = DEFAULT_STREAM,
                     worker: str | None = None) -> PullReport:
    """``pull`` on the running loop."""
    out = Path(outdir)
    subject = subject_for(service, worker or "any")  # validates both names
    if not worker:
        subject = f"{SUBJECT_PREFIX}.{service}.*"
    try:
        nc = await connect(url)
    except NATS_FAILURES as exc:
        raise OffboxError(f"cannot reach NATS at {url}: {exc}") from None
    writer = _Writer()
    report = PullReport()
    try:
        js = nc.jetstream(timeout=5.0)
        try:
            await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            raise OffboxError(f"NATS at {url} has no stream {stream!r}") from None
        seq = 1
        while True:
            try:
                msg = await js.get_msg(stream, seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                break
            seq = (msg.seq or seq) + 1
            _, w = parse_subject(msg.subject or "")
            h = msg.headers or {}
            try:
                seg, off, n = int(h[H_SEGMENT]), int(h[H_OFFSET]), int(h[H_ENTRIES])
            except (KeyError, ValueError):
                raise OffboxError(f"message {msg.seq} on {msg.subject} is not an audit message") from None
            directory = out if worker else out / w
            stats = report.workers.setdefault(w, {"directory": str(directory), "messages": 0, "entries": 0,
                                                  "bytes": 0, "segments": 0})
            written = writer.put(directory, seg, off, msg.data or b"", f"{msg.subject} #{msg.seq}")
            if written is None:
                report.duplicates += 1
                continue
            stats["messages"] += 1
            stats["entries"] += n
            stats["bytes"] += written
            stats["segments"] = max(stats["segments"], seg + 1)
    except NATS_FAILURES as exc:
        raise OffboxError(f"lost NATS at {url} while pulling: {exc}") from None
    finally:
        writer.close()
        await nc.close()
    return report


class _Writer:
    """Appends message bytes to segment files, checking continuity (one open file at a time)."""

    def __init__(self) -> None:
        self._path: Path | None = None
        self._file: IO[bytes] | None = None
        self._size = 0
        self._started: set[Path] = set()

    def put(self, directory: Path, seg: int, off: int, data: bytes, what: str) -> int | None:
        """Write ``data`` at ``off`` of segment ``seg``; the bytes written, None for a duplicate."""
        path = directory / segment_name(seg)
        if path != self._path:
            self.close()
            directory.mkdir(parents=True, exist_ok=True)
            # The copy may start after segment 0 (a retention cut before shipping), never skip one.
            fresh = directory not in self._started and not any(directory.glob("segment-*.tgaudit"))
            if seg > 0 and not fresh and not (directory / segment_name(seg - 1)).exists():
                raise OffboxError(f"{what}: segment {seg} but no segment {seg - 1} (a gap in the stream)")
            if seg > 0 and not fresh and not _closed(directory / segment_name(seg - 1)):
                raise OffboxError(f"{what}: segment {seg} but segment {seg - 1} lacks its closing checkpoint "
                                  "(a gap in the stream)")
            self._started.add(directory)
            self._path, self._size = path, path.stat().st_size if path.exists() else 0
        size = self._size
        if off > size:
            raise OffboxError(f"{what}: starts at byte {off} of {path.name}, the copy ends at {size} (a gap)")
        overlap = min(size - off, len(data))
        if overlap and read_exact(path, off, overlap) != data[:overlap]:
            raise OffboxError(f"{what}: differs from the bytes already in {path} at {off} (a conflict)")
        if overlap == len(data):
            return None
        if self._file is None:
            self._file = path.open("ab")
        self._file.write(data[overlap:])
        self._size = size + len(data) - overlap
        return len(data) - overlap

    def close(self) -> None:
        """Flush and fsync the open file."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        self._path = None



def _closed(path: Path) -> bool:
    """Whether segment ``path`` ends with its closing checkpoint."""
    last = None
    for _, _, payload, _ in read_entries(path):
        last = payload
    try:
        return last is not None and msgspec.msgpack.decode(last, type=Checkpoint).closing
    except msgspec.ValidationError:
        return False
