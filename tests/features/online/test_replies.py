"""Reading pipelined HMGET replies (sans-IO): the numpy path for regular replies, the general parsers
(hiredis' C reader and the pure-Python fallback) for everything else, however the bytes are split."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tailguard.features.online import replies as replies_mod
from tailguard.features.online.codec import KeyLayout, encode_values
from tailguard.features.online.errors import FeatureStoreError
from tailguard.features.online.replies import HmgetParser, HmgetReplies, ProtocolError, reply_shape
from tailguard.features.online.wire import HmgetRequest, pack_hmget
from tailguard.spec import EntitySpec

WIDTHS = (3, 2)  # two views of 3 and 2 float32 features: values of 28 and 24 bytes


@pytest.fixture(params=["hiredis", "python"])
def general_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test with each general parser (hiredis when installed, else only the Python one)."""
    if request.param == "hiredis" and replies_mod._hiredis is None:
        pytest.skip("hiredis not installed")
    if request.param == "python":
        monkeypatch.setattr(replies_mod, "_hiredis", None)
    yield request.param


def value(width: int, x: float, written: int = 10) -> bytes:
    return encode_values(np.full((1, width), x, dtype=np.float32), written, written + 1)[0]


def bulk(v: bytes | None) -> bytes:
    return b"$-1\r\n" if v is None else b"$%d\r\n%s\r\n" % (len(v), v)


def reply(values: list[bytes | None]) -> bytes:
    return b"*%d\r\n" % len(values) + b"".join(bulk(v) for v in values)


def regular(n: int) -> tuple[list[list[bytes | None]], bytes]:
    lists: list[list[bytes | None]] = [[value(3, i, 100 + i), value(2, -i, 200 + i)] for i in range(n)]
    return lists, b"".join(reply(r) for r in lists)


def feed_split(r: HmgetReplies, data: bytes, cuts: list[int]) -> bool:
    """Feed ``data`` in pieces cut at ``cuts``; True when the reader said complete at the very end only."""
    edges = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    done = False
    for a, b in itertools.pairwise(edges):
        assert not done, "complete before every byte arrived"
        done = r.feed(data[a:b])
    return done


@given(n=st.integers(2, 40), cuts=st.lists(st.integers(0, 4000), max_size=8))
def test_a_regular_reply_is_read_as_one_numpy_block_however_it_is_split(n: int, cuts: list[int]) -> None:
    lists, data = regular(n)
    r = HmgetReplies(reply_shape(WIDTHS), n)
    assert feed_split(r, data, cuts)
    got = r.result()
    assert got.records is not None and got.replies is None  # no per-key objects
    assert got.records["w0"].tolist() == [100 + i for i in range(n)]
    assert got.records["v1"][:, 0].tolist() == [-i for i in range(n)]
    assert got.lists() == lists


@settings(max_examples=60)
@given(
    n=st.integers(1, 20),
    holes=st.lists(
        st.tuples(st.integers(0, 19), st.integers(0, 1), st.sampled_from(["missing", "short", "long"])),
        min_size=1, max_size=5,
    ),
    cuts=st.lists(st.integers(0, 3000), max_size=8),
    parser=st.sampled_from(["hiredis", "python"]),
)
def test_irregular_replies_go_to_the_general_parser_with_the_same_result(
    n: int, holes: list[tuple[int, int, str]], cuts: list[int], parser: str
) -> None:
    lists, _ = regular(n)
    for i, j, kind in holes:
        raw = lists[i % n][j] or b""
        lists[i % n][j] = None if kind == "missing" else (b"x" * 5 if kind == "short" else raw + b"extra")
    data = b"".join(reply(r) for r in lists)
    saved = replies_mod._hiredis
    if parser == "python" or saved is None:
        replies_mod._hiredis = None
    try:
        r = HmgetReplies(reply_shape(WIDTHS), n)
        assert feed_split(r, data, cuts)
    finally:
        replies_mod._hiredis = saved
    got = r.result()
    assert got.records is None and got.lists() == lists


@given(cuts=st.lists(st.integers(0, 200), max_size=5))
def test_one_key_goes_to_the_general_parser(cuts: list[int]) -> None:
    lists, data = regular(1)
    r = HmgetReplies(reply_shape(WIDTHS), 1)
    assert feed_split(r, data, cuts)
    got = r.result()
    assert got.records is None and got.lists() == lists


def test_setup_replies_are_skipped_before_the_block() -> None:
    lists, data = regular(3)
    r = HmgetReplies(reply_shape(WIDTHS), 3, skip=2)
    assert not r.feed(b"+OK\r\n+O")
    assert r.feed(b"K\r\n" + data)
    assert r.result().lists() == lists


def test_a_failed_setup_is_a_store_error(general_parser: str) -> None:
    _, data = regular(1)
    r = HmgetReplies(reply_shape(WIDTHS), 1, skip=1)
    with pytest.raises(FeatureStoreError, match="setup failed"):
        r.feed(b"-WRONGPASS invalid username-password pair\r\n" + data)


def test_an_error_reply_fails_the_read(general_parser: str) -> None:
    lists, _ = regular(2)
    data = reply(lists[0]) + b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
    r = HmgetReplies(reply_shape(WIDTHS), 2)
    with pytest.raises(FeatureStoreError, match="WRONGTYPE") as info:
        r.feed(data)
    assert not isinstance(info.value, ProtocolError)


@pytest.mark.parametrize("garbage", [b":12\r\n", b"*1\r\n$3\r\nabc\r\n", b"?what\r\n", b"*2\r\n:1\r\n:2\r\n"])
def test_bytes_that_are_no_hmget_reply_are_a_protocol_error(general_parser: str, garbage: bytes) -> None:
    r = HmgetReplies(reply_shape(WIDTHS), 1)
    with pytest.raises(ProtocolError):
        r.feed(garbage)


def test_the_python_parser_agrees_with_the_reader_on_a_mixed_reply() -> None:
    lists, _ = regular(4)
    lists[1][0] = None
    data = b"".join(reply(r) for r in lists)
    p = HmgetParser(4, 2)
    assert p.feed(data) and p.replies == lists


@given(
    keys=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=30),
    service=st.sampled_from(["svc", "ŝervice-ü"]),
)
def test_integer_keys_pack_to_the_same_bytes_as_their_hash_keys(keys: list[int], service: str) -> None:
    layout = KeyLayout(service, [EntitySpec(name="item", key_dtype="int64")])
    req = HmgetRequest((b"a@1", "vué@2".encode()), layout.tag("item"))
    assert req.pack_ints(keys) == pack_hmget(layout.keys("item", keys), req.head, req.tail)
