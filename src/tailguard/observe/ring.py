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

Reader (``RingReader``, any process that maps the fd): ``head()``, ``records(start, stop)``
(a view of the contiguous run from ``start``; callers loop at the ring's end), ``read`` (a copy
across the end), ``advance(to)`` and ``decode`` into entries shaped like ``DecisionTap``'s
``(decision, features_bytes, written_bytes, filled_ns, rows)``.  Keys come back as they went
in (a msgpack list at the top level becomes a tuple again); a batch's keys come back as a
list of row keys (a mapping of key sequences becomes a list of per-row mappings).

Owner: the writer is the engine's thread; the reader one other thread or process.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.util
import mmap
import operator
import os
import shlex
import shutil
import struct
import subprocess
import sysconfig
import tempfile
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import msgspec
import numpy as np

from tailguard.decision import BatchDecision, Decision
from tailguard.engine import Engine

__all__ = ["HEADER_BYTES", "MAGIC", "DecisionRing", "RingFeed", "RingLayout", "RingReader", "compile_writer"]

MAGIC = b"TGRING01"
HEADER_BYTES = 256
KEY_STR, KEY_INT, KEY_MSGPACK, KEY_SPILLED = range(4)
# Header slots (u64 index).
_CAP, _REC, _WIDTH, _VIEWS, _OUTS, _KEYB = range(1, 7)
_HEAD, _PENDING, _CONSUMED, _DROPPED = 8, 9, 16, 24
_HEAD_FIELDS, _TIMINGS = struct.Struct("<qq"), struct.Struct("<5q")  # bytes 0..16, 16..56 of a record
_TAIL_FIELDS = struct.Struct("<qhHHHBxxxIII")  # bytes 56..88
_U64 = (1 << 64) - 1
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_MAX_ID = 0xFFFF


def _align8(n: int) -> int:
    return (n + 7) & ~7


class RingLayout:
    """The record dtype for ``width`` features, ``n_views`` write times and ``n_outputs``
    outputs a decision, keys of up to ``key_bytes`` bytes inline (see the module docstring)."""

    def __init__(self, width: int, n_views: int, n_outputs: int, key_bytes: int = 64) -> None:
        if min(width, n_views, n_outputs) < 0 or not 8 <= key_bytes <= 0xFFFF:
            raise ValueError(f"bad ring layout: width={width} n_views={n_views} n_outputs={n_outputs} "
                             f"key_bytes={key_bytes}")
        self.width, self.n_views, self.n_outputs, self.key_bytes = width, n_views, n_outputs, key_bytes
        self.o_key = 88
        self.o_outputs = _align8(88 + key_bytes)
        self.o_features = self.o_outputs + 8 * n_outputs
        self.o_written = _align8(self.o_features + 4 * width)
        self.itemsize = self.o_written + 8 * n_views
        fields: list[tuple[str, Any, int]] = [
            ("position", "<i8", 0), ("filled_ns", "<i8", 8), ("timings_ns", ("<i8", (5,)), 16),
            ("flags", "<i8", 56), ("rung_index", "<i2", 64), ("version", "<u2", 66),
            ("priority", "<u2", 68), ("key_len", "<u2", 70), ("key_kind", "u1", 72),
            ("batch_rows", "<u4", 76), ("batch_row", "<u4", 80), ("dropped_before", "<u4", 84),
            ("key", ("u1", (key_bytes,)), 88), ("outputs", ("<f8", (n_outputs,)), self.o_outputs),
            ("features", ("<f4", (width,)), self.o_features),
            ("written", ("<i8", (n_views,)), self.o_written),
        ]
        self.record: np.dtype[Any] = np.dtype({
            "names": [f[0] for f in fields], "formats": [f[1] for f in fields],
            "offsets": [f[2] for f in fields], "itemsize": self.itemsize})

    def numbers(self) -> tuple[int, int, int, int, int]:
        """Record size, width, n_views, n_outputs, key_bytes (as the header stores them)."""
        return self.itemsize, self.width, self.n_views, self.n_outputs, self.key_bytes


# -- keys ---------------------------------------------------------------------------------------------
def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise NotImplementedError(type(obj).__name__)


_ENC = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_DEC = msgspec.msgpack.Decoder()


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
            try:
                b = key.encode()
                if len(b) <= kb:
                    return KEY_STR, b, len(b)
            except UnicodeEncodeError:
                pass
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


# -- compiling the C writer -----------------------------------------------------------------------------
_compiled: dict[str, tuple[ModuleType | None, str]] = {}


def cache_dir() -> Path:
    """Where compiled writers are kept."""
    env = os.environ.get("TAILGUARD_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tailguard"


def _compiler() -> list[str] | None:
    cc = shlex.split(str(sysconfig.get_config_var("CC") or ""))
    if cc and shutil.which(cc[0]):
        return cc
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return [name]
    return None


def compile_writer() -> tuple[ModuleType | None, str]:
    """The compiled ``_ringwriter`` module (compiled into the cache at first use), or None and
    why it is not available."""
    if os.environ.get("TAILGUARD_NO_COMPILE", "") not in ("", "0"):
        return None, "TAILGUARD_NO_COMPILE is set"
    try:
        source = resources.files("tailguard.observe").joinpath("_ringwriter.c").read_bytes()
    except OSError as e:
        return None, f"cannot read _ringwriter.c: {e}"
    suffix = str(sysconfig.get_config_var("EXT_SUFFIX") or ".so")
    flags = _numpy_flags()
    digest = hashlib.sha256(source + suffix.encode() + " ".join(flags).encode()).hexdigest()[:16]
    directory = cache_dir()
    path = directory / f"_ringwriter-{digest}{suffix}"
    memo = _compiled.get(str(path))
    if memo is not None:
        return memo
    result = _build_and_load(source, path, directory, flags)
    _compiled[str(path)] = result
    return result


def _numpy_flags() -> list[str]:
    """Compiler flags for numpy's array struct (the outputs' fast path), with its version: the
    struct is read directly, so a writer is compiled per numpy version.  None without headers."""
    include = Path(np.get_include())
    if not (include / "numpy" / "ndarraytypes.h").exists():
        return []
    return ["-DTG_NUMPY", f"-DTG_NUMPY_VERSION={np.__version__}", f"-I{include}"]


def _build_and_load(source: bytes, path: Path, directory: Path,
                    flags: list[str]) -> tuple[ModuleType | None, str]:
    if not path.exists():
        cc = _compiler()
        if cc is None:
            return None, "no C compiler found (CC, cc, gcc, clang)"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, src = tempfile.mkstemp(suffix=".c", prefix="_ringwriter-", dir=directory)
            with os.fdopen(fd, "wb") as f:
                f.write(source)
            tmp = f"{src[:-2]}.tmp{path.suffix}"
            try:
                include = sysconfig.get_paths()["include"]
                cmd = [*cc, "-O2", "-shared", "-fPIC", f"-I{include}", *flags, src, "-o", tmp]
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
                if r.returncode != 0:
                    last = (r.stderr or r.stdout).strip().splitlines()[-1:] or [""]
                    return None, f"compiling _ringwriter.c failed ({r.returncode}): {last[0]}"
                os.replace(tmp, path)  # atomic: a concurrent compile replaces it with the same bytes
            finally:
                for p in (src, tmp):
                    if os.path.exists(p):
                        os.unlink(p)
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"compiling _ringwriter.c failed: {e}"
    try:
        name = "tailguard.observe._ringwriter"
        loader = importlib.machinery.ExtensionFileLoader(name, str(path))
        spec = importlib.util.spec_from_file_location(name, path, loader=loader)
        if spec is None:
            return None, f"cannot load {path}"
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    except Exception as e:  # ImportError, OSError: a broken cache file, another ABI
        return None, f"loading {path} failed: {e}"
    return module, ""


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


# -- reader ---------------------------------------------------------------------------------------------
class RingReader:
    """The reading side of a ring: a file descriptor (mapped here) or a buffer (an ``mmap``)."""

    def __init__(self, source: int | Any) -> None:
        self._mm: mmap.mmap | None = None
        if isinstance(source, int):
            size = os.fstat(source).st_size
            if size < HEADER_BYTES:
                raise ValueError(f"not a decision ring: {size} bytes")
            self._mm = buf = mmap.mmap(source, size)
        else:
            buf = source
        raw = np.frombuffer(buf, dtype=np.uint8)
        if raw.size < HEADER_BYTES or raw[:8].tobytes() != MAGIC:
            raise ValueError(f"not a decision ring (magic {raw[:8].tobytes()!r}, expected {MAGIC!r})")
        hdr = np.frombuffer(buf, dtype=np.uint64, count=HEADER_BYTES // 8)
        cap, rec, width, views, outs, keyb = (int(x) for x in hdr[_CAP:_KEYB + 1])
        try:
            lay = RingLayout(width, views, outs, keyb)
        except ValueError as e:
            raise ValueError(f"decision ring header mismatch: {e}") from None
        if cap <= 0 or cap & (cap - 1) or rec != lay.itemsize or raw.size < HEADER_BYTES + cap * rec:
            raise ValueError(f"decision ring header mismatch: capacity {cap}, record size {rec} (layout "
                             f"{lay.itemsize}), {raw.size} bytes")
        self.layout, self.capacity = lay, cap
        self._hdr = hdr
        self._recs = np.frombuffer(buf, dtype=lay.record, count=cap, offset=HEADER_BYTES)

    def head(self) -> int:
        """The writer's next position: every record below it is complete."""
        return int(self._hdr[_HEAD])

    def consumed(self) -> int:
        """The position below which this reader is done."""
        return int(self._hdr[_CONSUMED])

    def dropped(self) -> int:
        """Decisions the writer dropped (ring full)."""
        return int(self._hdr[_DROPPED])

    def pending_drops(self) -> int:
        """Decisions dropped since the last written record (the next record will carry them):
        what a reader that will see no further record (the writer is gone) adds at the end."""
        return int(self._hdr[_PENDING])

    def records(self, start: int, stop: int) -> np.ndarray:
        """Records ``start`` .. ``stop`` as a view into the ring, cut at the ring's end (callers
        loop); valid until ``advance`` lets the writer reuse their slots."""
        i = start & (self.capacity - 1)
        n = max(0, min(stop - start, self.capacity - i))
        return self._recs[i:i + n]

    def read(self, start: int, stop: int) -> np.ndarray:
        """A copy of records ``start`` .. ``stop`` (across the ring's end)."""
        parts = []
        while start < stop:
            r = self.records(start, stop)
            parts.append(r.copy())
            start += len(r)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.layout.record)

    def advance(self, to: int) -> None:
        """Tell the writer every record below ``to`` is done with (its slots may be reused)."""
        self._hdr[_CONSUMED] = to

    def decode(self, records: np.ndarray, versions: Sequence[str], priorities: Sequence[str],
               output_names: Sequence[str], rung_names: Sequence[str],
               spilled: Mapping[int, bytes] | None = None) -> list[tuple[Any, ...]]:
        """``DecisionTap``-shaped entries of ``records`` (whole batches only)."""
        return decode(records, versions, priorities, output_names, rung_names, spilled)

    def close(self) -> None:
        """Unmap (a fd given to the constructor stays open)."""
        if self._mm is not None:
            del self._hdr, self._recs
            with contextlib.suppress(BufferError):
                self._mm.close()


def _key_of(r: np.void, spilled: Mapping[int, bytes] | None) -> Any:
    kind, n = int(r["key_kind"]), int(r["key_len"])
    raw = r["key"].tobytes()
    try:
        if kind == KEY_STR:
            return raw[:n].decode()
        if kind == KEY_INT:
            return int.from_bytes(raw[:8], "little", signed=True)
        b = raw[:n] if kind == KEY_MSGPACK else None if spilled is None else spilled.get(int(r["position"]))
        if b is None:
            return None
        k = _DEC.decode(b)
        return tuple(k) if isinstance(k, list) else k
    except (UnicodeDecodeError, msgspec.DecodeError):
        return None


def _label(table: Sequence[str], i: int) -> str:
    return table[i] if i < len(table) else ""


def decode(records: np.ndarray, versions: Sequence[str], priorities: Sequence[str],
           output_names: Sequence[str], rung_names: Sequence[str],
           spilled: Mapping[int, bytes] | None = None) -> list[tuple[Any, ...]]:
    """Entries ``(decision, features_bytes, written_bytes, filled_ns, rows)`` of ``records`` —
    ``rows`` 0 for a single decision, n for a batch rebuilt from its n records; ``ValueError``
    when a batch is cut (read whole runs: ``RingReader.read(start, head)``)."""
    names, rungs = tuple(output_names), tuple(rung_names)
    out: list[tuple[Any, ...]] = []
    i, n = 0, len(records)
    if not n:
        return out
    # Whole columns at once (a few C-level passes), then plain Python objects per record: a
    # side process decodes every decision, and numpy scalar access per field cost it ~3x more.
    batch_rows = records["batch_rows"].tolist()
    all_timings = records["timings_ns"].tolist()
    vids, pids = records["version"].tolist(), records["priority"].tolist()
    rung_ix, flag_col, filled_col = records["rung_index"].tolist(), records["flags"].tolist(), \
        records["filled_ns"].tolist()
    kinds, klens = records["key_kind"].tolist(), records["key_len"].tolist()
    feats = np.ascontiguousarray(records["features"]).tobytes()
    written = np.ascontiguousarray(records["written"]).tobytes()
    keys = np.ascontiguousarray(records["key"]).tobytes()
    outputs = np.ascontiguousarray(records["outputs"], dtype=np.float64).reshape(n, -1)
    fw, ww, kw = len(feats) // n, len(written) // n, len(keys) // n
    while i < n:
        rows = batch_rows[i]
        timings = tuple(all_timings[i])
        version, priority = _label(versions, vids[i]), _label(priorities, pids[i])
        if rows == 0:
            ri = rung_ix[i]
            if kinds[i] == KEY_STR:
                try:
                    key: Any = keys[i * kw:i * kw + klens[i]].decode()
                except UnicodeDecodeError:
                    key = None
            else:
                key = _key_of(records[i], spilled)
            d = Decision(key, outputs[i].copy(), names, version, rungs[ri] if 0 <= ri < len(rungs) else "",
                         ri, flag_col[i], priority, timings)
            out.append((d, feats[i * fw:(i + 1) * fw], written[i * ww:(i + 1) * ww], filled_col[i], 0))
            i += 1
            continue
        r = records[i]
        g = records[i:i + rows]
        if len(g) < rows or not np.array_equal(g["batch_row"], np.arange(rows)) \
                or not (g["batch_rows"] == rows).all():
            raise ValueError(f"incomplete batch at position {int(r['position'])}: read whole runs")
        bd = BatchDecision([_key_of(x, spilled) for x in g], g["outputs"].copy(), names, version, rungs,
                           g["rung_index"].astype(np.int8), g["flags"].astype(np.uint8), priority, timings)
        out.append((bd, g["features"].tobytes(), g["written"].tobytes(), int(r["filled_ns"]), rows))
        i += rows
    return out
