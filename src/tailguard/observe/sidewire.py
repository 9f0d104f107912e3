"""The wire between a service and its side process: length-prefixed msgpack frames on pipes.

Main → side (``data`` pipe), each frame a msgpack array whose first item is its kind:

==================  ============================================================================
``DECISIONS``       ``[0, first, dropped, hashes, entries]``: ``entries`` are tap entries in tap
                    order from tap position ``first``; ``dropped`` decisions the tap could not
                    keep since the last frame (they come before these entries); ``hashes`` maps
                    model version labels first seen in this frame to their content hashes
                    (None when none is new).  An entry is the tap tuple
                    ``(decision, features, written, filled, rows)`` with the decision
                    as a msgpack map of its fields and its numpy arrays as ``ARRAY`` extensions.
``LABELS``          ``[1, [[key, label, decided_ns, prediction], ...]]``: delayed labels for the
                    drift monitor (``DriftMonitor.observe_label``).
``SINGLES``         ``[2, first, dropped, hashes, n, output_names, keys, features, written,
                    filled, outputs, versions, rungs, rung_indexes, flags, priorities,
                    timings]``: a run of ``n`` single decisions as columns — each a
                    list, or one ``bytes`` of the rows joined (features, written, outputs) —
                    what a serving process sends in the common case: building it costs ~0.5 µs
                    per decision against ~1.5-3 for a map per decision (``DECISIONS``).
``TABLES``          ``[3, versions_from, versions, hashes, priorities_from, priorities, spilled]``:
                    with the ring transport (decisions in a ``tailguard.observe.ring``
                    ``DecisionRing`` in shared memory, not on this pipe), the labels behind the
                    records' ids that the side process has not been sent yet — model version
                    labels from index ``versions_from`` (with their content hashes), priority
                    names from ``priorities_from`` — and keys too long for a record
                    (``{position: msgpack bytes}``).  Sent after a (re)start and whenever the
                    ring's tables grew.
==================  ============================================================================

Side → main (``status`` pipe): msgpack maps — ``{"ready": true}`` once the side process is
running, ``{"error": [code, message]}`` when it cannot start, and status maps with ``ack``
(the tap position below which every decision is handed to the OS by the audit log, or consumed
when there is none), ``drift_scores``, ``drift`` (statistics) and ``audit`` (counters).

A frame is ``<u32 length><payload>``.  Both ends write with non-blocking ``os.write`` and keep
what did not fit (``Outbox``), so neither ever blocks on the other; readers collect bytes
(``Inbox``) and yield whole frames.  Arrays travel as ``<dtype str>\\0<ndim u8><shape u32...>``
followed by the raw bytes (extension code 1): bit for bit what the engine produced.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from typing import Any

import msgspec
import numpy as np

from tailguard.decision import BatchDecision, Decision

__all__ = ["ARRAY", "DECISIONS", "LABELS", "SINGLES", "TABLES", "Inbox", "Outbox", "decode_decision",
           "decoder", "encoder", "frame", "singles_entries", "singles_frame"]

DECISIONS, LABELS, SINGLES, TABLES = 0, 1, 2, 3
ARRAY = 1  # msgpack extension code of a numpy array
_LEN = struct.Struct("<I")
#: Largest frame either end accepts (a frame of decisions is one side-path slice's worth).
MAX_FRAME = 64 << 20


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        head = a.dtype.str.encode() + b"\0" + struct.pack(f"<B{a.ndim}I", a.ndim, *a.shape)
        return msgspec.msgpack.Ext(ARRAY, head + a.tobytes())
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot send {type(obj).__name__} to the side process")


def _ext_hook(code: int, data: memoryview) -> Any:
    if code != ARRAY:
        raise ValueError(f"unknown extension {code} on the side-process wire")
    raw = bytes(data)
    cut = raw.index(b"\0")
    dtype = np.dtype(raw[:cut].decode())
    ndim = raw[cut + 1]
    shape = struct.unpack_from(f"<{ndim}I", raw, cut + 2)
    return np.frombuffer(raw, dtype=dtype, offset=cut + 2 + 4 * ndim).reshape(shape)


def encoder() -> msgspec.msgpack.Encoder:
    """The encoder of both ends (numpy arrays as ``ARRAY`` extensions)."""
    return msgspec.msgpack.Encoder(enc_hook=_enc_hook)


def decoder() -> msgspec.msgpack.Decoder[Any]:
    """The decoder of both ends."""
    return msgspec.msgpack.Decoder(ext_hook=_ext_hook)


def frame(payload: bytes) -> bytes:
    """``payload`` with its length prefix."""
    return _LEN.pack(len(payload)) + payload


def decode_decision(m: dict[str, Any]) -> Decision | BatchDecision:
    """A decision from its msgpack map (a ``BatchDecision`` when it has ``keys``)."""
    if "keys" in m:
        return BatchDecision(m["keys"], m["outputs"], tuple(m["output_names"]), m["model_version"],
                             tuple(m["rung_names"]), m["rungs"], m["flags"], m["priority"],
                             tuple(m["timings_ns"]))
    key = m["key"]
    return Decision(tuple(key) if isinstance(key, list) else key, m["outputs"], tuple(m["output_names"]),
                    m["model_version"], m["rung"], m["rung_index"], m["flags"], m["priority"],
                    tuple(m["timings_ns"]))


def singles_frame(first: int, dropped: int, hashes: dict[str, str] | None, run: list[Any]) -> list[Any]:
    """The ``SINGLES`` message of a run of tap entries that are all single decisions."""
    ds = [e[0] for e in run]
    return [SINGLES, first, dropped, hashes, len(run), ds[0].output_names, [d.key for d in ds],
            b"".join([e[1] for e in run]), b"".join([e[2] for e in run]),
            [e[3] for e in run],
            b"".join([d.outputs.tobytes() for d in ds]), [d.model_version for d in ds], [d.rung for d in ds],
            [d.rung_index for d in ds], [d.flags for d in ds], [d.priority for d in ds],
            [d.timings_ns for d in ds]]


def singles_entries(msg: list[Any], width: int, n_views: int) -> Iterator[tuple[Any, ...]]:
    """The tap entries of a ``SINGLES`` message (``width`` features, ``n_views`` write times a row)."""
    (_, _, _, _, n, names, keys, feats, written, filled, outputs, versions, rungs, indexes, flags, priorities,
     timings) = msg
    names = tuple(names)
    out = np.frombuffer(outputs, dtype=np.float64).reshape(n, len(names))
    fw, ww = 4 * width, 8 * n_views
    for i in range(n):
        key = keys[i]
        d = Decision(tuple(key) if isinstance(key, list) else key, out[i], names, versions[i], rungs[i],
                     indexes[i], flags[i], priorities[i], tuple(timings[i]))
        yield (d, feats[i * fw:(i + 1) * fw], written[i * ww:(i + 1) * ww], filled[i], 0)


class Outbox:
    """Frames waiting to be written to a non-blocking pipe ``fd``; ``flush`` writes what fits."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self._pending = bytearray()
        self.bytes_written = 0

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, data: bytes) -> None:
        """Queue ``data`` (whole frames) and write what the pipe takes now."""
        self._pending += data
        self.flush()

    def flush(self) -> bool:
        """Write queued bytes until the pipe is full; True when nothing is left.  Raises
        ``BrokenPipeError`` when the reader is gone."""
        p = self._pending
        while p:
            try:
                n = os.write(self.fd, p)
            except BlockingIOError:
                return False
            self.bytes_written += n
            del p[:n]
        return True

    def drop(self) -> None:
        """Forget queued bytes (the reader is gone; the frames will be sent again)."""
        self._pending.clear()


class Inbox:
    """Bytes read from a non-blocking pipe ``fd``, yielded as whole frames by ``frames``."""

    def __init__(self, fd: int, *, blocking: bool = False) -> None:
        self.fd = fd
        os.set_blocking(fd, blocking)
        self._buf = bytearray()
        self.eof = False

    def read(self, limit: int = 1 << 20) -> int:
        """Read what is there (up to ``limit`` bytes); sets ``eof`` when the writer is gone."""
        try:
            data = os.read(self.fd, limit)
        except BlockingIOError:
            return 0
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
            data = b""
        if not data:
            self.eof = True
        self._buf += data
        return len(data)

    def read_all(self) -> int:
        """Read until the pipe is empty (or closed); the bytes read."""
        total = 0
        while n := self.read():
            total += n
        return total

    def frames(self) -> Iterator[bytearray]:
        """The whole frames read so far."""
        buf, pos = self._buf, 0
        try:
            while len(buf) - pos >= 4:
                (n,) = _LEN.unpack_from(buf, pos)
                if n > MAX_FRAME:
                    raise ValueError(f"side-process frame of {n} bytes (at most {MAX_FRAME})")
                if len(buf) - pos - 4 < n:
                    break
                yield buf[pos + 4:pos + 4 + n]
                pos += 4 + n
        finally:
            del buf[:pos]
