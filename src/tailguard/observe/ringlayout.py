"""The decision ring's shared layout: header slots, key kinds and the record dtype.

Shared by the writer (``tailguard.observe.ring``, whose module docstring documents every offset)
and the reader (``tailguard.observe.ringread``), which may run in another process.
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

__all__ = ["HEADER_BYTES", "KEY_INT", "KEY_MSGPACK", "KEY_SPILLED", "KEY_STR", "MAGIC", "RingLayout"]

MAGIC = b"TGRING01"
HEADER_BYTES = 256
KEY_STR, KEY_INT, KEY_MSGPACK, KEY_SPILLED = range(4)
# Header slots (u64 index).
_CAP, _REC, _WIDTH, _VIEWS, _OUTS, _KEYB = range(1, 7)
_HEAD, _PENDING, _CONSUMED, _DROPPED = 8, 9, 16, 24
_DEC = msgspec.msgpack.Decoder()


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
