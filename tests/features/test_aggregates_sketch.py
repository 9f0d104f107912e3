"""HyperLogLog distinct counts: a fixed hash, accuracy, order independence and the batch twin."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tailguard.features.aggregates import HyperLogLog, hash64

items = st.one_of(st.text(max_size=8), st.binary(max_size=8), st.integers(-(10**12), 10**12))


def test_hash_is_fixed_across_processes() -> None:
    # BLAKE2b, not hash(): pinned values hold in every process and on every machine.
    assert hash64("user-42") == int.from_bytes(
        __import__("hashlib").blake2b(b"user-42", digest_size=8).digest(), "little"
    )
    assert hash64(7) != hash64("7")


def test_keyed_hash_differs_from_unkeyed() -> None:
    assert hash64("a", key=b"k") != hash64("a")


def test_hash_rejects_floats() -> None:
    with pytest.raises(TypeError):
        hash64(1.5)  # type: ignore[arg-type]


def test_empty_sketch_counts_zero() -> None:
    assert HyperLogLog(10).value == 0.0


def test_repeated_items_count_once() -> None:
    h = HyperLogLog(12)
    for _ in range(5):
        for i in range(100):
            h.add(f"user-{i}")
    assert h.value == pytest.approx(100, rel=0.05)


@pytest.mark.parametrize("n", [1_000, 50_000])
def test_estimate_is_within_four_standard_errors(n: int) -> None:
    h = HyperLogLog(12)
    for i in range(n):
        h.add(i)
    assert h.value == pytest.approx(n, rel=4 * 1.04 / 64)


def test_merge_equals_the_sketch_of_the_union() -> None:
    a, b, both = HyperLogLog(8), HyperLogLog(8), HyperLogLog(8)
    for i in range(300):
        (a if i % 2 else b).add(i)
        both.add(i)
    a.merge(b)
    assert (a.registers, a.value) == (both.registers, both.value)


def test_merge_rejects_a_different_shape() -> None:
    with pytest.raises(ValueError):
        HyperLogLog(8).merge(HyperLogLog(9))


@pytest.mark.parametrize("p", [3, 17])
def test_precision_out_of_range_is_rejected(p: int) -> None:
    with pytest.raises(ValueError):
        HyperLogLog(p)


@given(xs=st.lists(items, max_size=200), p=st.integers(4, 10))
def test_hyperloglog_incremental_equals_batch(xs: list[str | bytes | int], p: int) -> None:
    h = HyperLogLog(p)
    online = np.array([h.update(x) for x in xs], dtype=np.float64)
    assert np.array_equal(online, HyperLogLog.batch(xs, p))


@given(data=st.data())
def test_value_does_not_depend_on_insertion_order(data: st.DataObject) -> None:
    xs = data.draw(st.lists(items, max_size=100))
    shuffled = data.draw(st.permutations(xs))
    a, b = HyperLogLog(6), HyperLogLog(6)
    for x in xs:
        a.add(x)
    for x in shuffled:
        b.add(x)
    assert a.value == b.value
