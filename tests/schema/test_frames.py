"""Framing: length prefixes split a byte stream into the frames that were sent, however the
stream is cut; an oversize header is refused before its body is buffered."""

from __future__ import annotations

import itertools
import struct

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tailguard.schema.frames import HEADER, FrameReader, FrameTooLarge, encode_frame

payloads = st.lists(st.binary(max_size=300), max_size=20)


def framed(items: list[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in items)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    points = sorted({p % (len(data) + 1) for p in points})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@given(payloads, st.lists(st.integers(min_value=0), max_size=30))
def test_any_cut_of_the_stream_yields_the_frames_sent(items: list[bytes], points: list[int]) -> None:
    reader = FrameReader(max_frame=1000)
    got: list[bytes] = []
    for chunk in cut(framed(items), points):
        got.extend(reader.feed(chunk))
    assert got == items and reader.buffered == 0


@given(payloads)
def test_byte_by_byte_feeding_yields_the_frames_sent(items: list[bytes]) -> None:
    reader = FrameReader(max_frame=1000)
    data = framed(items)
    got = [f for i in range(len(data)) for f in reader.feed(data[i : i + 1])]
    assert got == items


@given(st.integers(min_value=101, max_value=2**32 - 1), st.integers(min_value=0, max_value=3))
def test_an_oversize_header_is_refused_without_buffering_the_body(length: int, prefix: int) -> None:
    reader = FrameReader(max_frame=100)
    data = framed([b"ok"]) + struct.pack(">I", length)
    with pytest.raises(FrameTooLarge) as e:
        for chunk in cut(data, [prefix]):
            reader.feed(chunk)
    assert (e.value.length, e.value.limit) == (length, 100) and reader.buffered <= HEADER


def test_a_frame_exactly_at_the_limit_is_accepted() -> None:
    assert FrameReader(max_frame=5).feed(framed([b"12345"])) == [b"12345"]


def test_a_partial_frame_waits_for_its_rest() -> None:
    reader = FrameReader()
    data = framed([b"hello"])
    assert reader.feed(data[:6]) == [] and reader.buffered == 6
    assert reader.feed(data[6:]) == [b"hello"]


def test_encode_frame_prefixes_the_msgpack_length() -> None:
    f = encode_frame(msgspec.msgpack.Encoder(), [1, "x"])
    (n,) = struct.unpack(">I", f[:4])
    assert n == len(f) - 4 and msgspec.msgpack.decode(f[4:]) == [1, "x"]
