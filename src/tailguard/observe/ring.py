"""A shared-memory ring of decisions, written by a compiled hook and read from another process.

Why: the reply path's side-path hook (``DecisionTap.on_decision``) costs ~1.2 µs at p50 on an
~8 µs call, mostly Python object work on cold cache lines.  Copying the same data — the
decision's fields, the engine's feature row, the assembler's stored-row write times and its
fill time — into a preallocated record with ``memcpy`` from a small C extension costs about
half of that, and the records then sit in shared memory (``memfd``) where a side process on
another core can read them without a pipe, a frame or a pickle.

Writer (``DecisionRing``, the engine hook): ``on_decision`` is ``_ringwriter.c`` compiled at
first use with the system C compiler into a cache directory (``$TAILGUARD_CACHE_DIR``, else
``$XDG_CACHE_HOME/tailguard``, else ``~/.cache/tailguard``); when that is impossible (no
compiler, ``TAILGUARD_NO_COMPILE=1``) an equivalent Python writer writes the same bytes and
``fallback_reason`` says why.  ``on_batch`` is Python (numpy) for both.  The hook never raises:
a decision whose fields cannot be read is counted in ``errors`` and not written.  When the
reader is ``capacity`` records behind, a decision is not written: ``dropped`` counts it and the
next written record carries the gap in ``dropped_before``.  Labels (model versions,
priorities) are small ids into the writer's ``versions`` / ``priorities`` lists; a key whose
encoded form does not fit ``key_bytes`` is kept whole in the writer's ``spilled`` dict (by
position), so only a reader in the writer's process can rebuild it (others see ``None``).

Shared memory: a 256-byte header, then ``capacity`` (a power of two) records; record ``p``
(a decision's position, 0, 1, 2, ...) lives in slot ``p & (capacity - 1)``.

Header (little-endian u64 unless noted)::

    0    magic b"TGRING01" (8 bytes)
    8    capacity          16   record size        24   width (features per row)
    32   n_views           40   n_outputs          48   key_bytes       56   reserved (0)
    64   head      next position to write; stored by the writer only, after the record's
                   bytes (release order): every record below ``head`` is complete
    72   pending   dropped since the last written record (writer-private)
    128  consumed  position below which the reader is done (stored by the reader only)
    192  dropped   decisions not written because the ring was full (writer)

``head``, ``consumed`` and ``dropped`` sit on cache lines of their own (the reader's store to
``consumed`` does not take the writer's line away; the writer reads ``consumed`` only when the
ring looks full).

Record (``RingLayout.record``; K = key_bytes, k = n_outputs, W = width, V = n_views;
``align8`` rounds up to a multiple of 8; gaps are zero bytes)::

    0    position        <i8    the decision's sequence number
    8    filled_ns       <i8    assembler.filled_ns (engine clock) when it was decided
    16   timings_ns      <i8 (5,)  ingest, features, inference, delivery, total
    56   flags           <i8
    64   rung_index      <i2
    66   version         <u2    id in the writer's ``versions`` (model_version labels)
    68   priority        <u2    id in the writer's ``priorities``
    70   key_len         <u2    bytes of the key's encoded form (its full length if spilled)
    72   key_kind        u1     0 str (UTF-8), 1 int (<i8 in the first 8 key bytes), 2 other
                                (msgspec msgpack), 3 spilled (msgpack longer than K, first K
                                bytes here, all in ``spilled[position]``)
    73   (3 zero bytes)
    76   batch_rows      <u4    0: a single decision; n: row ``batch_row`` of a batch of n
    80   batch_row       <u4
    84   dropped_before  <u4    decisions dropped (ring full) since the previous record
    88   key             K bytes
    O = align8(88 + K)                outputs   <f8 (k,)
    F = O + 8k                        features  <f4 (W,)
    R = align8(F + 4W)                written   <i8 (V,)
    record size = R + 8V

A batch of n rows is n consecutive records published together (or dropped together); its
feature rows and write times come from ``engine.last_features(n)`` / ``last_written_ns(n)``.

Reader (``RingReader``, ``ringread``; any process that maps the fd): ``head()``, ``records(start, stop)``
(a view of the contiguous run from ``start``; callers loop at the ring's end), ``read`` (a copy
across the end), ``advance(to)`` and ``decode`` into entries shaped like ``DecisionTap``'s
``(decision, features_bytes, written_bytes, filled_ns, rows)``.  Keys come back as they went
in (a msgpack list at the top level becomes a tuple again); a batch's keys come back as a
list of row keys (a mapping of key sequences becomes a list of per-row mappings).

This module is the writer; the layout's constants and record dtype are in
``tailguard.observe.ringlayout``, the reader in ``tailguard.observe.ringread`` and the compiling
of the C writer in ``tailguard.observe.ringbuild`` — all re-exported here.

Owner: the writer is the engine's thread; the reader one other thread or process.
"""

from __future__ import annotations

import contextlib
import mmap
import operator
import os
import struct
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import msgspec
import numpy as np

from tailguard.decision import BatchDecision, Decision
from tailguard.engine import Engine
from tailguard.observe.ringbuild import compile_writer
from tailguard.observe.ringlayout import (
    _CONSUMED,
    _DROPPED,
    _HEAD,
    _PENDING,
    HEADER_BYTES,
    KEY_INT,
    KEY_MSGPACK,
    KEY_SPILLED,
    KEY_STR,
    MAGIC,
    RingLayout,
)
from tailguard.observe.ringread import RingReader, decode

__all__ = ["HEADER_BYTES", "KEY_INT", "KEY_MSGPACK", "KEY_SPILLED", "KEY_STR", "MAGIC", "DecisionRing",
           "RingFeed", "RingLayout", "RingReader", "compile_writer", "decode"]

_HEAD_FIELDS, _TIMINGS = struct.Struct("<qq"), struct.Struct("<5q")  # bytes 0..16, 16..56 of a record
_TAIL_FIELDS = struct.Struct("<qhHHHBxxxIII")  # bytes 56..88
_U64 = (1 << 64) - 1
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_MAX_ID = 0xFFFF


# -- keys ---------------------------------------------------------------------------------------------
def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    # msgspec's enc_hook protocol: NotImplementedError means "not a type this hook converts"
    # (``_encode_other`` then records the key's repr).
    raise NotImplementedError(type(obj).__name__)


_ENC = msgspec.msgpack.Encoder(enc_hook=_enc_hook)


def _encode_other(key: Any) -> bytes:
    """msgpack of a key that is neither a short str nor an int64 (its repr when msgpack cannot)."""
    try:
        return _ENC.encode(key)
    except Exception:
        try:
            return _ENC.encode(repr(key))
        except Exception:
            return _ENC.encode(f"<{type(key).__name__}>")


def _i64(x: Any) -> int:
    """``x`` as int64 the way the C writer reads it (``PyLong_AsLongLong``), 0 where that fails."""
    try:
        v = operator.index(x)
    except Exception:
        return 0
    return v if _I64_MIN <= v <= _I64_MAX else 0


class _Tables:
    """Label tables and the key/outputs helpers both writers call for the uncommon cases."""

    def __init__(self, key_bytes: int, n_outputs: int, capacity: int, header: np.ndarray) -> None:
        self.key_bytes, self.n_outputs, self.capacity = key_bytes, n_outputs, capacity
        self._hdr = header
        self.versions: list[str] = []
        self.version_ids: dict[Any, int] = {}
        self.priorities: list[str] = []
        self.priority_ids: dict[Any, int] = {}
        self.spilled: dict[int, bytes] = {}

    @staticmethod
    def _intern(labels: list[str], ids: dict[Any, int], label: Any) -> int:
        if type(label) is not str:
            try:
                label = str(label)
            except Exception:
                label = "<?>"
        i = ids.get(label)
        if i is not None:
            return i
        if len(labels) >= _MAX_ID:
            return _MAX_ID
        i = len(labels)
        labels.append(label)
        ids[label] = i
        return i

    def intern_version(self, label: Any) -> int:
        return self._intern(self.versions, self.version_ids, label)

    def intern_priority(self, label: Any) -> int:
        return self._intern(self.priorities, self.priority_ids, label)

    def key_slow(self, key: Any, position: int) -> tuple[int, bytes, int]:
        """(kind, bytes for the record, key_len) of a key the fast path does not take."""
        kb = self.key_bytes
        if type(key) is str:
            with contextlib.suppress(UnicodeEncodeError):  # lone surrogates: msgpack below
                b = key.encode()
                if len(b) <= kb:
                    return KEY_STR, b, len(b)
        elif type(key) is int and _I64_MIN <= key <= _I64_MAX:
            return KEY_INT, key.to_bytes(8, "little", signed=True), 8
        b = _encode_other(key)
        if len(b) <= kb:
            return KEY_MSGPACK, b, len(b)
        spilled = self.spilled
        spilled[position] = b
        if len(spilled) > self.capacity:  # forget what the reader is done with
            done = int(self._hdr[_CONSUMED])
            for p in [p for p in spilled if p < done]:
                del spilled[p]
        return KEY_SPILLED, b[:kb], len(b)

    def key(self, key: Any, position: int) -> tuple[int, bytes, int]:
        """The C writer's key logic: fast cases inline, the rest through ``key_slow``."""
        if type(key) is str:
            try:
                b = key.encode()
            except UnicodeEncodeError:
                return self.key_slow(key, position)
            if len(b) <= self.key_bytes:
                return KEY_STR, b, len(b)
        elif type(key) is int and _I64_MIN <= key <= _I64_MAX:
            return KEY_INT, key.to_bytes(8, "little", signed=True), 8
        return self.key_slow(key, position)

    def outputs_slow(self, outputs: Any) -> bytes:
        """The ``8 * n_outputs`` output bytes of anything that is not a contiguous float64 buffer."""
        n = 8 * self.n_outputs
        try:
            a = np.ascontiguousarray(outputs, dtype=np.float64).ravel()
        except Exception:
            a = np.zeros(0)
        return a[: self.n_outputs].tobytes().ljust(n, b"\0")


def _row_bytes(obj: Any, n: int) -> bytes:
    """The first ``n`` bytes of a C-contiguous buffer, zero-padded (as the C writer copies it)."""
    mv = memoryview(obj)
    if not mv.c_contiguous:
        raise ValueError("not contiguous")
    return mv.tobytes()[:n].ljust(n, b"\0")


class _PyWriter:
    """The Python twin of ``_ringwriter.Writer`` (same arguments, same bytes)."""

    def __init__(self, buf: mmap.mmap, cap: int, rec: int, key_bytes: int, o_out: int, n_out: int,
                 o_feat: int, width: int, o_writ: int, n_views: int, engine: Engine, asm: Any,
                 version_ids: dict[Any, int], priority_ids: dict[Any, int],
                 intern_version: Callable[[Any], int], intern_priority: Callable[[Any], int],
                 key: Callable[[Any, int], tuple[int, bytes, int]],
                 outputs_slow: Callable[[Any], bytes]) -> None:
        self._buf: mmap.mmap | None = buf
        self._q: memoryview | None = memoryview(buf).cast("B")[:HEADER_BYTES].cast("Q")  # the header
        self._cap, self._mask, self._rec = cap, cap - 1, rec
        self._key_area, self._n_out, self._out_len = o_out - 88, n_out, 8 * n_out
        self._feat_len, self._gap = 4 * width, bytes(o_writ - (o_feat + 4 * width))
        self._writ_len = 8 * n_views
        self._engine, self._asm = engine, asm
        self._vids, self._pids = version_ids, priority_ids
        self._intern_version, self._intern_priority = intern_version, intern_priority
        self._key, self._outputs_slow = key, outputs_slow
        self.errors = 0

    @staticmethod
    def _id(ids: dict[Any, int], helper: Callable[[Any], int], label: Any) -> int:
        try:
            i = ids.get(label)
        except TypeError:
            i = None
        return (i if type(i) is int else helper(label)) & 0xFFFF

    def on_decision(self, d: Decision) -> None:
        """Write one decision (the C writer's steps, in its order)."""
        hdr, buf = self._q, self._buf
        if hdr is None or buf is None:
            return
        head = hdr[_HEAD]
        if (head - hdr[_CONSUMED]) & _U64 >= self._cap:
            hdr[_DROPPED] = (hdr[_DROPPED] + 1) & _U64
            hdr[_PENDING] = (hdr[_PENDING] + 1) & _U64
            return
        try:
            t = d.timings_ns
            if type(t) is tuple and len(t) == 5:
                try:
                    timings = _TIMINGS.pack(*t)
                except (struct.error, TypeError):
                    timings = _TIMINGS.pack(*map(_i64, t))
            else:
                timings = _TIMINGS.pack(*(_i64(t[i]) if i < len(t) else 0 for i in range(5))
                                        if isinstance(t, tuple) else (0,) * 5)
            flags = d.flags
            if type(flags) is not int or not _I64_MIN <= flags <= _I64_MAX:
                flags = _i64(flags)
            ri = d.rung_index
            if type(ri) is not int or not -0x8000 <= ri < 0x8000:
                ri = ((_i64(ri) + 0x8000) & 0xFFFF) - 0x8000
            vid = self._id(self._vids, self._intern_version, d.model_version)
            pid = self._id(self._pids, self._intern_priority, d.priority)
            kind, kb, klen = self._key(d.key, head)
            o = d.outputs
            if type(o) is np.ndarray and o.dtype == np.float64 and o.flags.c_contiguous:
                ob = o.tobytes()[: self._out_len].ljust(self._out_len, b"\0")
            else:
                ob = self._outputs_slow(o)
                if len(ob) != self._out_len:
                    raise ValueError("outputs")
            feats = _row_bytes(self._engine._wide_row, self._feat_len)
            written = _row_bytes(self._asm._written_row, self._writ_len)
            filled = self._asm.filled_ns
            if type(filled) is not int or not _I64_MIN <= filled <= _I64_MAX:
                filled = _i64(filled)
        except Exception:
            self.errors += 1
            return
        data = b"".join((
            _HEAD_FIELDS.pack(head, filled), timings,
            _TAIL_FIELDS.pack(flags, ri, vid, pid, min(klen, 0xFFFF), kind, 0, 0,
                              min(hdr[_PENDING], 0xFFFFFFFF)),
            kb.ljust(self._key_area, b"\0"), ob, feats, self._gap, written))
        off = HEADER_BYTES + (head & self._mask) * self._rec
        buf[off:off + self._rec] = data
        hdr[_PENDING] = 0
        hdr[_HEAD] = head + 1

    def publish(self, head: int) -> None:
        """Publish records written by ``DecisionRing.on_batch`` (no release fence from Python:
        ordered on x86; the compiled writer's ``publish`` stores with release order)."""
        if self._q is not None:
            self._q[_PENDING] = 0
            self._q[_HEAD] = head

    def release(self) -> None:
        if self._q is not None:
            self._q.release()
        self._q = self._buf = None


# -- shared memory -------------------------------------------------------------------------------------
def _shared(size: int) -> tuple[int, mmap.mmap, IO[bytes] | None]:
    """A file descriptor of ``size`` zero bytes and its shared mapping (memfd, else a temp file)."""
    keep: IO[bytes] | None = None
    try:
        fd = os.memfd_create("tailguard-ring")
    except (AttributeError, OSError):
        keep = tempfile.TemporaryFile()  # noqa: SIM115 (kept open as long as the ring)
        fd = keep.fileno()
    os.ftruncate(fd, size)
    # Pages mapped now, not on the reply path's first write to each (a fault costs µs there).
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    return fd, mmap.mmap(fd, size, flags=flags), keep


class DecisionRing:
    """An engine hook writing each decision of ``engine`` into a shared-memory ring of
    ``capacity`` records (rounded up to a power of two); see the module docstring."""

    #: The engine hook for one decision: the compiled writer's method, or the Python writer's.
    on_decision: Callable[[Decision], None]

    def __init__(self, engine: Engine, capacity: int = 4096, *, key_bytes: int = 64,
                 compiled: bool = True) -> None:
        asm = engine.assembler
        self.engine = engine
        self.layout = lay = RingLayout(asm.width, len(asm.stored_views), len(engine.output_names), key_bytes)
        self.capacity = cap = 1 << max(0, (capacity - 1).bit_length())
        self.size = HEADER_BYTES + cap * lay.itemsize
        self.fd, self._mm, self._file = _shared(self.size)
        self._mm[:8] = MAGIC
        struct.pack_into("<6Q", self._mm, 8, cap, *lay.numbers())
        self._hdr: np.ndarray = np.frombuffer(self._mm, dtype=np.uint64, count=HEADER_BYTES // 8)
        self._raw: np.ndarray = np.frombuffer(self._mm, dtype=np.uint8, offset=HEADER_BYTES).reshape(
            cap, lay.itemsize)
        self._tables = t = _Tables(key_bytes, lay.n_outputs, cap, self._hdr)
        #: Model version labels and priority names by id (the records' ``version``/``priority``).
        self.versions: list[str] = t.versions
        self.priorities: list[str] = t.priorities
        #: Encoded keys longer than ``key_bytes``, by position (until the reader is past them).
        self.spilled: dict[int, bytes] = t.spilled
        self._batch_errors = 0
        self._module, reason = compile_writer() if compiled else (None, "compiled=False")
        self._writer: Any
        self._writer, reason = self._make_writer(engine, reason)
        self._feeds: list[Any] = []
        self.compiled = self._module is not None
        #: Why the Python writer is in use ("" when the compiled one is).
        self.fallback_reason = reason
        self.on_decision = self._writer.on_decision

    def _make_writer(self, engine: Engine, reason: str = "") -> tuple[Any, str]:
        """A writer (compiled if the module loaded) of ``engine``'s decisions into this ring."""
        lay, t = self.layout, self._tables
        args = (self._mm, self.capacity, lay.itemsize, lay.key_bytes, lay.o_outputs, lay.n_outputs,
                lay.o_features, lay.width, lay.o_written, lay.n_views, engine, engine.assembler,
                t.version_ids, t.priority_ids, t.intern_version, t.intern_priority)
        if self._module is not None:
            try:
                return self._module.Writer(*args, t.key_slow, t.outputs_slow, Decision, np.ndarray), reason
            except Exception as e:
                self._module, reason = None, f"the compiled writer failed to start: {e}"
        return _PyWriter(*args, t.key, t.outputs_slow), reason

    def feed(self, engine: Engine) -> RingFeed:
        """A hook writing another engine's decisions into this ring (a canary's, built by
        ``tailguard.rollout`` over the same assembler layout): one sequence of positions."""
        lay = self.layout
        asm = engine.assembler
        if (asm.width, len(asm.stored_views), len(engine.output_names)) != (lay.width, lay.n_views,
                                                                          lay.n_outputs):
            raise ValueError("a ring feed needs the same feature, view and output layout")
        f = RingFeed(self, engine, self._make_writer(engine)[0])
        self._feeds.append(f)
        return f

    def preload(self, versions: Sequence[str] = (), priorities: Sequence[str] = ()) -> None:
        """Give ``versions`` and ``priorities`` their ids now (a reader started with these tables
        then needs no update for the labels known at start)."""
        for v in versions:
            self._tables.intern_version(v)
        for p in priorities:
            self._tables.intern_priority(p)

    # -- writer state ---------------------------------------------------------------------------------
    @property
    def head(self) -> int:
        """The next position to write (every record below it is complete)."""
        return int(self._hdr[_HEAD])

    @property
    def dropped(self) -> int:
        """Decisions not written because the ring was full."""
        return int(self._hdr[_DROPPED])

    @property
    def errors(self) -> int:
        """Decisions not written because their fields could not be read (never expected)."""
        return int(self._writer.errors) + sum(int(f.writer.errors) for f in self._feeds) + self._batch_errors

    def on_batch(self, d: BatchDecision) -> None:
        """Write one batch decision as ``len(d)`` consecutive records, or drop it whole."""
        try:
            self._write_batch(d, self.engine, self._writer)
        except Exception:
            self._batch_errors += 1

    def _write_batch(self, d: BatchDecision, engine: Engine, writer: Any) -> None:
        hdr, lay, cap = self._hdr, self.layout, self.capacity
        n = len(d)
        head = int(hdr[_HEAD])
        used = (head - int(hdr[_CONSUMED])) & _U64
        if n <= 0:
            return
        if used > cap or cap - used < n:
            hdr[_DROPPED] += n
            hdr[_PENDING] += n
            return
        t = self._tables
        vid = t.intern_version(d.model_version)
        pid = t.intern_priority(d.priority)
        keys = _row_keys(d.keys, n)
        if len(keys) != n:
            raise ValueError("keys")
        rec = np.zeros(n, dtype=lay.record)
        rec["position"] = np.arange(head, head + n, dtype=np.int64)
        rec["filled_ns"] = _i64(engine.assembler.filled_ns)
        tm = d.timings_ns
        rec["timings_ns"] = [_i64(tm[i]) if i < len(tm) else 0 for i in range(5)]
        rec["flags"] = np.asarray(d.flags).astype(np.int64).reshape(n)
        rec["rung_index"] = np.asarray(d.rungs).astype(np.int16).reshape(n)
        rec["version"], rec["priority"] = vid, pid
        rec["batch_rows"] = n
        rec["batch_row"] = np.arange(n, dtype=np.uint32)
        rec["dropped_before"][0] = min(int(hdr[_PENDING]), 0xFFFFFFFF)
        kinds, lens, kcol = rec["key_kind"], rec["key_len"], rec["key"]
        for i, k in enumerate(keys):
            kind, b, klen = t.key(k, head + i)
            kinds[i], lens[i] = kind, min(klen, 0xFFFF)
            kcol[i, : len(b)] = np.frombuffer(b, dtype=np.uint8)
        rec["outputs"] = np.asarray(d.outputs, dtype=np.float64).reshape(n, lay.n_outputs)
        rec["features"] = engine.last_features(n)
        rec["written"] = engine.last_written_ns(n)
        raw = rec.view(np.uint8).reshape(n, lay.itemsize)
        i = head & (cap - 1)
        m = min(n, cap - i)
        self._raw[i:i + m] = raw[:m]
        if m < n:
            self._raw[: n - m] = raw[m:]
        writer.publish(head + n)

    def reader(self) -> RingReader:
        """A reader over this ring's mapping (same process)."""
        return RingReader(self._mm)

    def close(self) -> None:
        """Unhook nothing, but free the mapping and the fd (the engine must no longer call it)."""
        for f in self._feeds:
            f.writer.release()
        self._writer.release()
        del self._hdr, self._raw
        self._tables._hdr = np.zeros(HEADER_BYTES // 8, dtype=np.uint64)
        with contextlib.suppress(BufferError):  # a reader view is still alive: it keeps the mapping
            self._mm.close()
        if self._file is not None:
            self._file.close()
        else:
            os.close(self.fd)


class RingFeed:
    """An engine hook that writes another engine's decisions into a ``DecisionRing``."""

    def __init__(self, ring: DecisionRing, engine: Engine, writer: Any) -> None:
        self.ring, self.engine, self.writer = ring, engine, writer
        self.on_decision: Callable[[Decision], None] = writer.on_decision

    def on_batch(self, d: BatchDecision) -> None:
        """Write one batch decision of ``engine`` (whole, or dropped whole)."""
        try:
            self.ring._write_batch(d, self.engine, self.writer)
        except Exception:
            self.ring._batch_errors += 1


def _row_keys(keys: Any, n: int) -> list[Any]:
    """A batch's keys, one per row (numpy scalars as Python ones)."""
    if isinstance(keys, np.ndarray):
        return list(keys.tolist())
    if isinstance(keys, Mapping):
        cols: dict[Any, list[Any]] = {}
        for e, v in keys.items():
            if isinstance(v, np.ndarray):
                cols[e] = list(v.tolist())
            elif isinstance(v, Sequence) and not isinstance(v, str | bytes):
                cols[e] = list(v)
            else:
                cols[e] = [v] * n
        return [{e: c[i] for e, c in cols.items()} for i in range(n)]
    return list(keys)


