"""The audit writer: an engine hook that queues decisions, and a side-path drain that appends
them to MAC-chained segment files (format in ``tailguard.audit.format``, docs/audit.md).

The log reads decisions from a ``DecisionTap`` (``tailguard.observe.tap``): on the reply path
the tap takes each decision's feature rows and the write times of the stored rows behind
them as two small ``bytes`` — nothing is encoded, hashed or written there.
``Service.attach`` binds the log to the service's one shared tap (the drift monitor reads
the same copies); a log used on its own feeds a tap of its own from its hooks.  When the tap
is full the decision is counted as dropped, and the next drain records a ``Dropped`` entry,
so the gap is part of the chain.

``drain`` (the owner's side path) rewrites PII keys, computes feature ages, encodes and
chains into one buffer, writes a checkpoint every ``checkpoint_records`` records or
``checkpoint_interval_s`` (Ed25519-signed with a ``signer``), and fsyncs at most every
``fsync_interval_s`` (0: after every drain, on the calling thread).  In batched mode the
drain only hands the OS the bytes and a duplicate of the segment's file descriptor to one
background thread, which fsyncs and closes it (a rotation closes the old segment with its
own fsync, so the dup keeps nothing alive that matters); one fsync is in flight per log at a
time.  Encoded records are handed to the OS when 32 KiB accumulated and at every checkpoint
and fsync, so after kill -9 or an OS crash at most the fsync window of records is missing,
never a link of the chain before it.  A segment rotates at ``segment_bytes``, and then the
``retention`` policy removes old segments behind an anchor.  Opening a directory that
already holds segments verifies it, cuts a torn last entry, closes the interrupted segment
and continues in a new segment chained to it.  ``drain(budget_ns)`` writes at least one
record, then another only while one more at the mean cost so far still fits the budget.

Owner: the engine's thread (hooks and drain); no locks (the fsync thread shares only its
queue and each log's ``_Synced`` counters).
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from tailguard.audit.format import (
    LEN,
    MAC_BYTES,
    MAGIC,
    NO_AGE,
    VERSION,
    ZERO_MAC,
    Checkpoint,
    DecisionRecord,
    Dropped,
    Header,
    checkpoint_message,
    key_id,
    segment_name,
)
from tailguard.audit.keys import Signer, load_key, new_key
from tailguard.audit.pii import PiiPolicy, SubjectKeys, plain
from tailguard.audit.problems import AuditError, AuditInvalid
from tailguard.audit.retention import Retention, cut
from tailguard.audit.verify import SegmentInfo, verify
from tailguard.decision import BatchDecision, Decision
from tailguard.engine import Engine
from tailguard.features.store import NEVER
from tailguard.observe.tap import FILLED, WRITTEN, DecisionTap, singles

if TYPE_CHECKING:
    from tailguard.service import Service

__all__ = ["AuditError", "AuditLog", "load_key", "model_hashes", "new_key"]

_RUN = 256  # ring slots whose ages are made in one numpy pass
_SMALL_RUN = 8  # shorter runs: ages per record (numpy's fixed cost would dominate)
_FLUSH_BYTES = 32 << 10  # encoded records kept in memory until this much, or the next fsync


class _Synced:
    """One log's background fsyncs: how many were asked for and done, and the last failure."""

    __slots__ = ("asked", "done", "error")

    def __init__(self) -> None:
        self.asked = self.done = 0
        self.error: OSError | None = None


_jobs: SimpleQueue[tuple[int, int, _Synced]] | None = None
_jobs_pid = 0


def _fsync_worker(jobs: SimpleQueue[tuple[int, int, _Synced]]) -> None:
    """The background thread: fsync each handed-over descriptor (a dup), close it, mark it done."""
    while True:
        fd, number, state = jobs.get()
        try:
            os.fsync(fd)
        except OSError as exc:
            state.error = exc
        finally:
            os.close(fd)
        state.done = number


def _fsync_in_background(fd: int, state: _Synced) -> None:
    """Hand a dup of ``fd`` to the fsync thread (started on first use, again in a forked child)."""
    global _jobs, _jobs_pid
    if _jobs is None or _jobs_pid != os.getpid():
        _jobs, _jobs_pid = SimpleQueue(), os.getpid()
        threading.Thread(target=_fsync_worker, args=(_jobs,), name="tailguard-audit-fsync",
                         daemon=True).start()
    state.asked += 1
    _jobs.put((os.dup(fd), state.asked, state))


def model_hashes(engine: Engine) -> dict[str, str]:
    """Version label -> content hash of every model rung of ``engine``."""
    return {r.label: r.model.manifest.content_hash for r in engine.rungs if r.model is not None}


class AuditLog:
    """Log every decision of ``engine`` to ``directory`` (install it as an engine hook, or
    ``service.attach`` it).  ``for_service`` also applies the spec's PII marks."""

    def __init__(self, directory: str | Path, key: bytes, service: str, engine: Engine, *,
                 capacity: int = 65_536, fsync_interval_s: float = 0.05, segment_bytes: int = 64 << 20,
                 checkpoint_records: int = 10_000, checkpoint_interval_s: float = 1.0,
                 signer: Signer | None = None, pii: PiiPolicy | None = None,
                 retention: Retention | None = None, wall_clock: Callable[[], int] = time.time_ns,
                 tap: DecisionTap | None = None) -> None:
        if sys.byteorder != "little":  # the format stores the engine's arrays as they are
            raise AuditError("the audit format is little-endian; this host is not")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key, self.service, self.engine, self.capacity = key, service, engine, capacity
        self.fsync_interval_ns = round(fsync_interval_s * 1e9)
        self.segment_bytes = segment_bytes
        self.checkpoint_records = checkpoint_records
        self._ck_interval_ns = round(checkpoint_interval_s * 1e9)
        self.signer, self.pii, self.retention = signer, pii, retention
        self._subjects: SubjectKeys | None = None if pii is None else pii.subject_keys
        # The decisions come from a tap: the service's shared one once attached (``bind_tap``),
        # else the log's own, fed by its hooks.
        self._tap = tap if tap is not None else DecisionTap(engine, capacity, wall_clock=wall_clock)
        self._own_tap = tap is None
        self._reader = self._tap.reader()
        #: The tap position below which every decision's record is in the OS (written, perhaps
        #: not yet fsynced): what survives this process's kill -9 (``observe.sideproc`` acks it).
        self.handed_over = self._reader.position
        self._encoder = msgspec.msgpack.Encoder(enc_hook=plain)
        self._mac = hashlib.blake2b(digest_size=MAC_BYTES, key=key)  # copied per entry
        self._wall, self._mono = wall_clock, engine.clock.now_ns
        self._assembler = engine.assembler
        self._views = engine.assembler.stored_views
        self._ages1 = struct.Struct(f"<{len(self._views)}q")
        self._hashes: dict[str, str] = {}
        self._learned: dict[str, str] = {}
        self.dropped = self._unrecorded_drops = self.written = self.checkpoints = 0
        self._last_fsync = self._since_ck = 0
        self._synced, self._dirty = _Synced(), False
        self._last_ck_ns = self._mono()
        self._file: Any = None
        self._buf = bytearray()
        self._digest = hashlib.sha256()
        self._prev, self._seq, self._segment, self._entries, self._bytes = ZERO_MAC, 0, 0, 0, 0
        self._log_id = os.urandom(16)
        self._infos: list[SegmentInfo] = []
        report = verify(self.directory, key, service) if any(self.directory.glob("segment-*")) else None
        self._anchor = None if report is None else report.anchor
        if report is not None:
            if not report.ok:
                assert report.problem is not None
                raise AuditInvalid(f"cannot continue the audit log in {self.directory}", report.problem)
            self._log_id = report.log_id or self._log_id
            self._prev, self._seq = report.last_mac, report.last_seq + 1
            self._segment = report.first_segment + report.segments
            self._infos = report.infos
            if not self._infos[-1].closed:  # the last writer died: cut a torn entry, close it
                self._reclose(self._infos[-1])
        self._open_segment()
        self._retain()

    @classmethod
    def for_service(cls, service: Service, directory: str | Path, key: bytes, *,
                    subject_keys: SubjectKeys | None = None, **options: Any) -> AuditLog:
        """A log of ``service``'s decisions, its PII keys rewritten as its spec marks them
        (``subject_keys`` is required when an entity is marked ``pii_mode = "hash"``)."""
        pii = PiiPolicy(service.spec.entities, service.engine.assembler.entities, subject_keys)
        return cls(directory, key, service.spec.name, service.engine,
                   pii=pii if pii.active else None, **options)

    # -- reply path (engine hooks): the tap copies, nothing else --------------------------------
    def on_decision(self, d: Decision) -> None:
        """Queue one decision in the log's own tap (a log reading a shared tap is no hook)."""
        self._tap.on_decision(d)

    def on_batch(self, d: BatchDecision) -> None:
        """Queue one batch decision in the log's own tap."""
        self._tap.on_batch(d)

    def bind_tap(self, tap: DecisionTap) -> None:
        """Read decisions from ``tap`` (the service's shared one) instead of the log's own;
        whatever the own tap still holds is written first."""
        if tap is self._tap:
            return
        self.drain()
        self._tap.remove(self._reader)
        self._tap, self._own_tap = tap, False
        self._reader = tap.reader()
        self.handed_over = self._reader.position

    # -- side path -------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Decisions queued and not yet written."""
        return self._reader.pending()

    def drain(self, budget_ns: int | None = None) -> int:
        """Write queued decisions for about ``budget_ns`` (None: all; at least one, and at
        least a 64th of the backlog); checkpoint, fsync and rotate when due.  Returns how
        many were written."""
        if self._file is None:
            return 0
        now = time.perf_counter_ns
        end = None if budget_ns is None else now() + budget_ns
        n = 0
        if self._subjects is not None:
            self._subjects.refresh()
        missed = self._reader.missed()
        if missed:
            self.dropped += missed
            self._unrecorded_drops += missed
        if self._unrecorded_drops:
            self._append(Dropped(self._next_seq(), self._wall(), self._unrecorded_drops))
            self._unrecorded_drops = 0
        every, reader = self.checkpoint_records, self._reader
        # At least one record per call, and a 64th of the backlog: under a budget too small for
        # the arrival rate the backlog settles near 64 ticks' arrivals instead of growing
        # until the tap drops records.
        floor = max(1, reader.pending() >> 6)
        while reader.pending() and (end is None or n < floor or now() < end):
            k = self._write_records(every - self._since_ck, end, max(0, floor - n))
            n += k
            self._since_ck += k
            if self._since_ck >= every:
                self._checkpoint(False)
        self.written += n
        self._infos[-1].records += n
        if self._since_ck and self._mono() - self._last_ck_ns >= self._ck_interval_ns:
            self._checkpoint(False)
        if self.fsync_interval_ns == 0:
            self._sync()
            self._last_fsync = now()
        elif self._synced.error is not None or (
                (self._dirty or self._buf) and now() - self._last_fsync >= self.fsync_interval_ns):
            self._flush()
            self._sync_later()
        elif len(self._buf) >= _FLUSH_BYTES:  # else the bytes wait for the next fsync or a fuller buffer
            self._flush()
        if self._bytes >= self.segment_bytes:
            self._close_segment()
            self._segment += 1
            self._open_segment()
            self._retain()
        return n

    def close(self) -> None:
        """Write everything queued, close the segment with a checkpoint, fsync."""
        self.drain()
        self._close_segment()
        self._tap.remove(self._reader)

    def _write_records(self, limit: int, end: int | None, first: int) -> int:
        """Encode and chain up to ``limit`` queued decisions into the buffer (at least ``first``,
        then while one more, at this call's mean cost per record, ends before ``end``); the
        per-record loop, kept to locals.  The ages of a run of single decisions are made at
        once (one numpy pass over their joined write times), then sliced per record."""
        tap, reader = self._tap, self._reader
        width, pii, hashes = self._assembler.width, self.pii, self._hashes
        encode, mac, buf, pack = self._encoder.encode, self._mac, self._buf, LEN.pack
        aw, ages1 = 8 * tap.n_views, self._ages1
        now = time.perf_counter_ns
        pos = reader.position
        total = min(tap.head - pos, limit)
        seq, prev, start, k, t0 = self._seq, self._prev, len(self._buf), 0, now()
        offset = tap.wall_offset()  # decided_ns + offset: the decision's wall-clock ns
        stop = False
        while k < total and not stop:
            run = tap.entries(pos + k, min(total - k, tap.capacity - ((pos + k) & tap.mask), _RUN))
            ones = len(run) >= _SMALL_RUN and singles(run)
            if ones:
                w = np.frombuffer(b"".join([e[WRITTEN] for e in run]), dtype=np.int64).reshape(len(run), -1)
                ab = self._ages(w, np.array([e[FILLED] for e in run], dtype=np.int64)[:, None])
            for j, (d, feats, written, filled, rows) in enumerate(run):
                if end is not None and k >= first:  # stop before a record of the mean cost would overrun
                    t = now()
                    if t + ((t - t0) // k if k else 0) >= end:
                        stop = True
                        break
                if not rows:
                    rungs, flags, keys = [d.rung_index], [d.flags], d.key
                else:
                    rungs, flags, keys = d.rungs.tolist(), d.flags.tolist(), d.keys
                    keys = keys.tolist() if isinstance(keys, np.ndarray) else keys
                if ones:
                    ages = ab[j * aw:(j + 1) * aw]
                elif not rows:
                    ages = ages1.pack(*[NO_AGE if v == NEVER else filled - v for v in ages1.unpack(written)])
                else:
                    ages = self._ages(np.frombuffer(written, dtype=np.int64), filled)
                if pii is not None:
                    keys = pii.apply(keys)
                t = d.timings_ns
                mono = filled + t[1] + t[2] + t[3]  # ``tap.decided_ns``, inlined
                version = d.model_version
                model_hash = hashes.get(version)
                if model_hash is None:
                    model_hash = self._model_hash(version)
                    hashes = self._hashes
                payload = encode(DecisionRecord(seq, mono + offset, mono, keys, d.priority, version, rungs,
                                                flags, width, feats, len(d.output_names), d.outputs.tobytes(),
                                                list(d.timings_ns), "", model_hash, ages))
                h = mac.copy()
                h.update(prev)
                h.update(payload)
                prev = h.digest()
                buf += pack(len(payload))
                buf += payload
                buf += prev
                seq += 1
                k += 1
        reader.advance(pos + k)
        self._seq, self._prev = seq, prev
        self._entries += k
        self._bytes += len(buf) - start
        return k

    # -- record contents ---------------------------------------------------------------------------
    @staticmethod
    def _ages(written: np.ndarray, filled: Any) -> bytes:
        """Each stored view's age at decision time, int64 LE (``NO_AGE``: never written)."""
        return np.where(written == NEVER, NO_AGE, filled - written).astype("<i8").tobytes()

    def learn_hashes(self, hashes: dict[str, str]) -> None:
        """Content hashes of model versions this log's engine does not hold (label -> hash): a
        side process logging another process's decisions learns them from it."""
        self._learned.update(hashes)
        self._hashes.update(hashes)

    def _model_hash(self, label: str) -> str:
        """The content hash of the model labelled ``label`` (models may be swapped at run time)."""
        self._hashes = {**model_hashes(self.engine), **self._learned}
        return self._hashes.setdefault(label, "")

    # -- file handling ----------------------------------------------------------------------------
    def _next_seq(self) -> int:
        s = self._seq
        self._seq = s + 1
        return s

    def _append(self, entry: Any) -> None:
        """Encode and chain one entry (headers, checkpoints, gaps; records: ``_write_records``)."""
        payload = self._encoder.encode(entry)
        h = self._mac.copy()
        h.update(self._prev)
        h.update(payload)
        tag = h.digest()
        buf = self._buf
        buf += LEN.pack(len(payload))
        buf += payload
        buf += tag
        self._prev = tag
        self._entries += 1
        self._bytes += LEN.size + len(payload) + MAC_BYTES

    def _flush(self) -> None:
        if self._buf:
            self._dirty = True
            self._file.write(self._buf)
            self._digest.update(self._buf)
            self._buf.clear()

    def _checkpoint(self, closing: bool) -> Checkpoint:
        self._flush()
        h = self._infos[-1].header
        ck = Checkpoint(self._seq, self._wall(), self._entries, closing, self._prev, self._digest.digest())
        if self.signer is not None:
            ck.signer = self.signer.public
            ck.signature = self.signer.sign(checkpoint_message(h.service, h.log_id, h.segment, ck))
        self._append(ck)
        self._since_ck, self._last_ck_ns = 0, self._mono()
        self.checkpoints += 1
        return ck

    def _open_segment(self) -> None:
        path = self.directory / segment_name(self._segment)
        self._file = path.open("ab")
        self._entries = self._bytes = 0
        self._digest = hashlib.sha256()
        header = Header(MAGIC, VERSION, self.service, self._segment, self._wall(), self._seq, self._log_id,
                        key_id(self.key), b"" if self.signer is None else self.signer.public,
                        list(self._views), {} if self.pii is None else dict(self.pii.modes))
        self._infos.append(SegmentInfo(self._segment, path, header, next_seq=self._seq))
        self._append(header)
        self._sync()

    def _reclose(self, info: SegmentInfo) -> None:
        if info.header.signer and self.signer is None:
            raise AuditError(f"{info.path.name} is signed and was not closed: give the signing key to "
                             "close it (the closing checkpoint must be signed)")
        with info.path.open("r+b") as f:
            f.truncate(info.end_offset)
            f.seek(0)
            self._digest = hashlib.sha256(f.read())
        self._file = info.path.open("ab")
        self._entries, self._bytes = info.entries, info.end_offset
        self._close_segment()

    def _close_segment(self) -> None:
        if self._file is None:
            return
        ck = self._checkpoint(True)
        self._sync()
        self._file.close()
        self._file = None
        info = self._infos[-1]
        info.closed, info.closed_wall_ns, info.last_mac = True, ck.wall_ns, self._prev
        info.next_seq, info.entries, info.end_offset = self._seq, self._entries, self._bytes

    def _retain(self) -> None:
        if self.retention is None or not self.retention.active:
            return
        n = self.retention.removable(self._infos, self._wall())
        if n:
            self._anchor = cut(self.directory, self.key, self._infos, n, service=self.service,
                               log_id=self._log_id, previous=self._anchor, signer=self.signer,
                               now_wall_ns=self._wall())
            del self._infos[:n]

    def _sync(self) -> None:
        self._flush()
        self._file.flush()
        self.handed_over = self._reader.position
        if self._subjects is not None:
            self._subjects.sync()  # keys before the records that use them
        os.fsync(self._file.fileno())
        self._dirty = False

    def _sync_later(self) -> None:
        """Hand the written bytes to the OS now and their fsync to the background thread
        (unless the last one is still running: then the next drain tries again)."""
        state = self._synced
        if state.error is not None:
            error, state.error = state.error, None
            raise AuditError(f"fsync of the audit log in {self.directory} failed") from error
        self._file.flush()  # after kill -9 the OS still has them
        self.handed_over = self._reader.position
        if state.done != state.asked:
            return
        if self._subjects is not None:
            self._subjects.sync()  # keys before the records that use them
        _fsync_in_background(self._file.fileno(), state)
        self._dirty, self._last_fsync = False, time.perf_counter_ns()
