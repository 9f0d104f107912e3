"""Decisions: outputs by name, flags as an enum, batch length."""

from __future__ import annotations

import numpy as np

from tailguard import STAGES, BatchDecision, Decision, Flag


def test_output_reads_by_name() -> None:
    d = Decision("k", np.array([0.25, 0.75]), ("p", "q"), "m/1", "primary", 0, 0, "normal", (0, 0, 0, 0, 0))
    assert (d.output("p"), d.output("q")) == (0.25, 0.75)


def test_flag_combines_bits() -> None:
    flags = int(Flag.UNKNOWN_ENTITY | Flag.FALLBACK)
    d = Decision("k", np.zeros(1), ("p",), "", "default", 3, flags, "normal", (0, 0, 0, 0, 0))
    assert Flag.FALLBACK in d.flag and Flag.STALE_FEATURE not in d.flag


def test_flags_are_distinct_bits() -> None:
    values = [int(f) for f in Flag if f is not Flag.NONE]
    assert all(v & (v - 1) == 0 for v in values) and len(set(values)) == len(values)


def test_batch_length_is_its_row_count() -> None:
    b = BatchDecision(["a", "b", "c"], np.zeros((3, 1)), ("p",), "", ("primary",), np.zeros(3, dtype=np.int8),
                      np.zeros(3, dtype=np.uint8), "normal", (0, 0, 0, 0, 0))
    assert len(b) == 3


def test_total_is_the_last_stage() -> None:
    assert STAGES[-1] == "total" and len(STAGES) == 5
