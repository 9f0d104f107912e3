"""The audit writer: an engine hook that queues decisions, and a side-path drain that appends
them to MAC-chained segment files (format in ``tailguard.audit.format``, docs/audit.md).

On the reply path ``on_decision``/``on_batch`` copy the decision's feature rows (a memcpy of
a few dozen bytes) and append one tuple to a bounded deque: nothing is encoded, hashed or
written there.  When the deque is full the decision is counted as dropped, and the next
drain records a ``Dropped`` entry, so the gap is part of the chain.  ``drain`` (the owner's
side path) encodes, chains and writes; the file is fsynced at most every ``fsync_interval_s``
(0: after every drain), so after kill -9 at most that window of records is missing.  Opening
a directory that already holds segments verifies it, cuts a torn last entry and continues in
a new segment chained to the last good entry.

Owner: the engine's thread (hooks and drain); no locks.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import msgspec

from tailguard.audit.format import (
    LEN,
    MAGIC,
    VERSION,
    Checkpoint,
    DecisionRecord,
    Dropped,
    Header,
    mac,
    segment_name,
)
from tailguard.audit.verify import read_entries, verify
from tailguard.decision import BatchDecision, Decision
from tailguard.engine import Engine
from tailguard.errors import TailguardError

__all__ = ["AuditError", "AuditLog", "load_key", "new_key"]


class AuditError(TailguardError):
    """The audit directory cannot be continued (it does not verify with this key)."""

    code = "audit_invalid"


def new_key(path: str | Path) -> bytes:
    """Write a new random 32-byte key to ``path`` (mode 0600) and return it."""
    key = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def load_key(path: str | Path) -> bytes:
    """Read a key written by ``new_key`` (16 to 64 bytes)."""
    key = Path(path).read_bytes()
    if not 16 <= len(key) <= 64:
        raise AuditError(f"an audit key is 16 to 64 bytes; {path} holds {len(key)}")
    return key


class AuditLog:
    """Log every decision of ``engine`` to ``directory`` (install it as an engine hook)."""

    def __init__(self, directory: str | Path, key: bytes, service: str, engine: Engine, *,
                 capacity: int = 65_536, fsync_interval_s: float = 0.05,
                 segment_bytes: int = 64 << 20) -> None:
        if sys.byteorder != "little":  # the format stores the engine's arrays as they are
            raise AuditError("the audit format is little-endian; this host is not")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key = key
        self.service = service
        self.engine = engine
        self.capacity = capacity
        self.fsync_interval_ns = round(fsync_interval_s * 1e9)
        self.segment_bytes = segment_bytes
        self._queue: deque[tuple[Any, ...]] = deque()
        self._encoder = msgspec.msgpack.Encoder()
        self._wall = time.time_ns
        self._mono = engine.clock.now_ns
        self.dropped = 0
        self._unrecorded_drops = 0
        self.written = 0
        self._last_fsync = 0
        self._file: Any = None
        report = verify(self.directory, key, service) if any(self.directory.glob("segment-*")) else None
        if report is not None and not report.ok:
            raise AuditError(f"cannot continue the audit log in {self.directory}: {report.problem}")
        self._prev, self._seq, self._segment = bytes(16), 0, 0
        if report is not None and report.tail is not None:
            path, good = report.tail
            self._prev, self._seq, self._segment = report.last_mac, report.last_seq + 1, report.segments
            if report.warnings:  # the last writer died: cut a torn entry, close its segment
                with path.open("r+b") as f:
                    f.truncate(good)
                self._file = path.open("ab")
                self._entries = sum(1 for _ in read_entries(path))
                self._close_segment()
        self._open_segment()

    # -- reply path (engine hooks): copy and enqueue only --------------------------------------
    def on_decision(self, d: Decision) -> None:
        """Queue one decision (with a copy of its feature row)."""
        if len(self._queue) >= self.capacity:
            self.dropped += 1
            self._unrecorded_drops += 1
            return
        self._queue.append((self._wall(), self._mono(), d, self.engine.last_features(1).tobytes()))

    def on_batch(self, d: BatchDecision) -> None:
        """Queue one batch decision (with a copy of its feature rows)."""
        if len(self._queue) >= self.capacity:
            self.dropped += 1
            self._unrecorded_drops += 1
            return
        self._queue.append((self._wall(), self._mono(), d, self.engine.last_features(len(d)).tobytes()))

    # -- side path -------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Decisions queued and not yet written."""
        return len(self._queue)

    def drain(self, budget_ns: int | None = None) -> int:
        """Write queued decisions for at most ``budget_ns`` (None: all); fsync when the interval
        has passed.  Returns how many were written."""
        now = time.perf_counter_ns
        end = None if budget_ns is None else now() + budget_ns
        n = 0
        if self._unrecorded_drops:
            self._append(Dropped(self._next_seq(), self._wall(), self._unrecorded_drops))
            self._unrecorded_drops = 0
        q = self._queue
        width = self.engine.assembler.width
        while q and (end is None or n % 32 or now() < end):
            wall, mono, d, feats = q.popleft()
            if isinstance(d, Decision):
                rungs, flags, keys = [d.rung_index], [d.flags], d.key
            else:
                rungs, flags, keys = d.rungs.tolist(), d.flags.tolist(), d.keys
                keys = keys.tolist() if hasattr(keys, "tolist") else keys
            rec = DecisionRecord(self._next_seq(), wall, mono, keys, d.priority, d.model_version, rungs,
                                 flags, width, feats, len(d.output_names), d.outputs.tobytes(),
                                 list(d.timings_ns))
            self._append(rec)
            n += 1
        if n or self.fsync_interval_ns == 0:
            t = now()
            if self.fsync_interval_ns == 0 or t - self._last_fsync >= self.fsync_interval_ns:
                self._sync()
                self._last_fsync = t
        if self._file is not None and self._file.tell() >= self.segment_bytes:
            self._close_segment()
            self._segment += 1
            self._open_segment()
        return n

    def close(self) -> None:
        """Write everything queued, close the segment with a checkpoint, fsync."""
        self.drain()
        self._close_segment()

    # -- file handling ----------------------------------------------------------------------------
    def _next_seq(self) -> int:
        s = self._seq
        self._seq = s + 1
        return s

    def _append(self, entry: Any) -> None:
        payload = self._encoder.encode(entry)
        tag = mac(self.key, self._prev, payload)
        self._file.write(LEN.pack(len(payload)) + payload + tag)
        self._prev = tag
        self._entries += 1
        if type(entry) is DecisionRecord:
            self.written += 1

    def _open_segment(self) -> None:
        self._file = (self.directory / segment_name(self._segment)).open("ab")
        self._entries = 0
        self._append(Header(MAGIC, VERSION, self.service, self._segment, self._wall(), self._seq))
        self._sync()

    def _close_segment(self) -> None:
        if self._file is None:
            return
        self._append(Checkpoint(self._seq, self._wall(), self._entries, True))
        self._sync()
        self._file.close()
        self._file = None

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
