"""W3C traceparent parsing and the head ratio sampler."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tailguard.observe.tracecontext import (
    RatioSampler,
    TraceParent,
    format_traceparent,
    parse_traceparent,
    quick_flag,
)

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
VALID = f"00-{TRACE}-{SPAN}-01"


def test_a_valid_header_parses_to_its_ids_and_flags() -> None:
    tp = parse_traceparent(VALID)
    assert tp == TraceParent(0, int(TRACE, 16), int(SPAN, 16), 1)
    assert tp.sampled and tp.trace_id_hex == TRACE


def test_the_sampled_flag_is_bit_zero_of_the_flags() -> None:
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-00").sampled is False  # type: ignore[union-attr]
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-03").sampled is True  # type: ignore[union-attr]
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-02").sampled is False  # type: ignore[union-attr]


def test_surrounding_blanks_are_tolerated() -> None:
    assert parse_traceparent(f" {VALID}\t") == parse_traceparent(VALID)


@pytest.mark.parametrize("value", [
    "",
    "garbage",
    VALID[:-1],  # too short
    VALID + "0",  # version 00 is exactly 55 characters
    VALID + "-extra",  # ... even with a field separator
    VALID.upper(),  # lower-case hex only
    f"ff-{TRACE}-{SPAN}-01",  # version ff is forbidden
    f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
    f"00-{TRACE[:-1]}g-{SPAN}-01",  # not hex
    f"00_{TRACE}_{SPAN}_01",  # wrong separators
    f"0-{TRACE}0-{SPAN}-01",  # fields of the wrong widths
    f"00-{TRACE}-{SPAN}-1",
])
def test_invalid_headers_do_not_parse(value: str) -> None:
    assert parse_traceparent(value) is None


def test_a_later_version_is_read_by_its_first_four_fields() -> None:
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-01") == TraceParent(1, int(TRACE, 16), int(SPAN, 16), 1)
    assert parse_traceparent(f"cc-{TRACE}-{SPAN}-00-what-comes-next") is not None
    assert parse_traceparent(f"cc-{TRACE}-{SPAN}-00x") is None  # more, but not after a '-'


@given(st.integers(1, (1 << 128) - 1), st.integers(1, (1 << 64) - 1), st.integers(0, 255))
def test_format_then_parse_round_trips(trace_id: int, span_id: int, flags: int) -> None:
    text = format_traceparent(trace_id, span_id, flags)
    assert len(text) == 55
    assert parse_traceparent(text) == TraceParent(0, trace_id, span_id, flags)


def test_quick_flag_reads_only_the_flags_of_a_version_00_shape() -> None:
    assert quick_flag(VALID) is True
    assert quick_flag(f"00-{TRACE}-{SPAN}-00") is False
    assert quick_flag(f"00-{TRACE}-{SPAN}-0A") is None  # upper-case: not a flags field
    assert quick_flag(VALID + "-x") is None  # another shape: the side path parses it


def test_the_ratio_sampler_decides_by_the_low_64_bits_of_the_trace_id() -> None:
    s = RatioSampler(0.25)
    assert s.bound == 1 << 62
    assert s.sampled((123 << 64) | ((1 << 62) - 1))
    assert not s.sampled((123 << 64) | (1 << 62))
    # Deterministic: the high half does not matter, and asking again gives the same answer.
    assert s.sampled(5) and s.sampled((1 << 100) | 5)


def test_ratio_zero_samples_nothing_and_one_samples_everything() -> None:
    none, every = RatioSampler(0.0), RatioSampler(1.0)
    for tid in (1, (1 << 64) - 1, 1 << 127):
        assert not none.sampled(tid)
        assert every.sampled(tid)


def test_root_returns_the_drawn_low_bits_when_sampled() -> None:
    s = RatioSampler(0.5)
    s._bits = lambda n: 7
    assert s.root() == 7
    s._bits = lambda n: (1 << 63) + 1
    assert s.root() == 0
    s._bits = lambda n: 9
    assert s.new_trace_id(3) == (9 << 64) | 3


@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan")])
def test_a_ratio_outside_zero_to_one_is_refused(ratio: float) -> None:
    with pytest.raises(ValueError, match="ratio"):
        RatioSampler(ratio)
