"""The reading side of the decision ring: map it (any process), take records, decode them.

Decoded records are ``DecisionTap``-shaped entries, so the audit log and the drift monitor of a
side process read them as they read a tap.  Layout: ``tailguard.observe.ring``.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import numpy as np

from tailguard.decision import BatchDecision, Decision
from tailguard.observe.ringlayout import (
    _CAP,
    _CONSUMED,
    _DEC,
    _DROPPED,
    _HEAD,
    _KEYB,
    _PENDING,
    HEADER_BYTES,
    KEY_INT,
    KEY_MSGPACK,
    KEY_STR,
    MAGIC,
    RingLayout,
)

__all__ = ["RingReader", "decode"]

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
