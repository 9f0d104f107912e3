"""The online store's key layout (Redis Cluster hash tags) and its compact binary value format."""

from __future__ import annotations

import json

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tailguard.errors import FeatureError, ValidationError
from tailguard.features.online.codec import (
    HEADER_BYTES,
    KeyLayout,
    decode_invalidation,
    decode_values,
    encode_invalidation,
    encode_values,
    place,
)
from tailguard.features.online.protocol import NO_AGE, Consistency, Rows, ValueFlag, ViewPolicy, ViewSet
from tailguard.features.view import FeatureView
from tailguard.spec import EntitySpec

ENTITIES = (EntitySpec(name="user"), EntitySpec(name="item", key_dtype="int64"))


def crc16_xmodem(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the checksum Redis Cluster maps keys to slots with."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def key_slot(key: bytes) -> int:
    """The Redis Cluster slot of ``key`` (hash tag rule from the Cluster specification)."""
    s = key.find(b"{")
    if s >= 0:
        e = key.find(b"}", s + 1)
        if e > s + 1:
            key = key[s + 1 : e]
    return crc16_xmodem(key) % 16384


def test_the_slot_function_matches_redis_reference_values() -> None:
    # Values from the Redis Cluster specification / CLUSTER KEYSLOT.
    assert key_slot(b"foo") == 12182
    assert key_slot(b"somekey") == 11058
    assert key_slot(b"{user1000}.following") == key_slot(b"{user1000}.followers")


finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@given(
    values=hnp.arrays(np.float32, st.tuples(st.integers(1, 8), st.integers(1, 6)), elements=finite32),
    written=st.integers(0, 2**62),
    event=st.integers(-(2**62), 2**62),
)
def test_values_round_trip_exactly(values: np.ndarray, written: int, event: int) -> None:
    raws = encode_values(values, written, event)
    assert len(raws) == values.shape[0]
    assert all(len(r) == HEADER_BYTES + 4 * values.shape[1] for r in raws)
    rec = decode_values(raws, values.shape[1])
    assert np.array_equal(rec["values"], values)
    assert (rec["written_ns"] == written).all() and (rec["event_ns"] == event).all()


def test_event_time_defaults_to_the_write_time_and_may_differ_per_row() -> None:
    values = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert (decode_values(encode_values(values, 7), 2)["event_ns"] == 7).all()
    events = np.array([1, 2, 3], dtype=np.int64)
    assert decode_values(encode_values(values, 7, events), 2)["event_ns"].tolist() == [1, 2, 3]


def test_values_are_compact_binary_not_json() -> None:
    values = np.array([[0.1, 123456.78, -3.5, 1e-7]], dtype=np.float32)
    raw = encode_values(values, 1_700_000_000_123_456_789)[0]
    assert len(raw) == 16 + 4 * 4  # two int64 times plus float32s, no names, no tags
    with pytest.raises(ValueError):
        json.loads(raw)
    as_json = json.dumps({"written_ns": 1_700_000_000_123_456_789, "event_ns": 1_700_000_000_123_456_789,
                          "values": values[0].tolist()}).encode()
    as_msgpack = msgspec.msgpack.encode([1_700_000_000_123_456_789, 1_700_000_000_123_456_789,
                                         values[0].tolist()])
    assert len(raw) < len(as_msgpack) < len(as_json)
    # Little-endian int64 write time first: readable without any schema.
    assert int.from_bytes(raw[:8], "little") == 1_700_000_000_123_456_789


def test_keys_carry_a_hash_tag_so_one_entity_lives_in_one_cluster_slot() -> None:
    layout = KeyLayout("svc", ENTITIES)
    k = layout.key("user", "u42")
    assert k == b"tg:{svc:user:u42}"
    # Every per-entity key that shares the tag maps to one slot (one node's) ...
    assert key_slot(k) == key_slot(k + b":state") == key_slot(b"{svc:user:u42}")
    # ... and different entities spread over slots (the tag is not a constant).
    slots = {key_slot(layout.key("user", f"u{i}")) for i in range(200)}
    assert len(slots) > 150
    assert layout.prefix == b"tg:{svc:" and k.startswith(layout.prefix)
    assert layout.channel == b"tg:inv:svc"


def test_int_keys_accept_numpy_integers_and_reject_other_types() -> None:
    layout = KeyLayout("svc", ENTITIES)
    assert layout.key("item", 7) == layout.key("item", np.int64(7)) == b"tg:{svc:item:7}"
    assert layout.keys("item", [1, np.int32(2)]) == [b"tg:{svc:item:1}", b"tg:{svc:item:2}"]
    with pytest.raises(ValidationError):
        layout.key("item", "7")
    with pytest.raises(ValidationError):
        layout.key("user", 7)
    with pytest.raises(ValidationError):
        layout.keys("user", ["a", 7])


@pytest.mark.parametrize("service", ["", "a{b", "a}b", "a b", "x" * 129])
def test_service_names_that_would_break_the_hash_tag_are_rejected(service: str) -> None:
    with pytest.raises(FeatureError):
        KeyLayout(service, ENTITIES)


def test_invalidation_payload_round_trips_and_rejects_garbage() -> None:
    keys = [b"tg:{svc:user:1}", b"tg:{svc:user:2}"]
    assert decode_invalidation(encode_invalidation(keys)) == keys
    with pytest.raises(ValidationError):
        decode_invalidation(b"\xc1not msgpack")


def _rows_after_place(views: dict[str, FeatureView], replies: list[bytes | None], now: int) -> Rows:
    vs = ViewSet([views["activity"]])
    rows = Rows.for_views(vs, len(replies))
    rows.reset(len(replies))
    place(rows, vs.views[0], 0, replies, 0, now)
    return rows


def test_place_flags_missing_corrupt_and_expired_values(views: dict[str, FeatureView]) -> None:
    now = 10**18
    fresh = encode_values(np.array([[1.0, 2.0]], dtype=np.float32), now - 5)[0]
    old = encode_values(np.array([[3.0, 4.0]], dtype=np.float32), now - 61 * 10**9)[0]
    rows = _rows_after_place(views, [fresh, None, b"short", old], now)
    assert rows.values[0].tolist() == [1.0, 2.0] and rows.ages_ns[0, 0] == 5 and rows.flags[0, 0] == 0
    assert rows.values[1].tolist() == [0.0, 0.5] and rows.ages_ns[1, 0] == NO_AGE
    assert rows.flags[1, 0] == ValueFlag.MISSING
    assert rows.values[2].tolist() == [0.0, 0.5] and rows.flags[2, 0] == ValueFlag.CORRUPT
    # Older than the 60 s TTL: defaults, but the true age is still reported.
    assert rows.values[3].tolist() == [0.0, 0.5] and rows.flags[3, 0] == ValueFlag.EXPIRED
    assert rows.ages_ns[3, 0] == 61 * 10**9


def test_place_of_a_single_value_takes_the_same_rules(views: dict[str, FeatureView]) -> None:
    now = 10**18
    old = encode_values(np.array([[3.0, 4.0]], dtype=np.float32), now - 61 * 10**9)[0]
    rows = _rows_after_place(views, [old], now)
    assert rows.values[0].tolist() == [0.0, 0.5] and rows.flags[0, 0] == ValueFlag.EXPIRED


def test_view_set_lays_views_side_by_side(views: dict[str, FeatureView]) -> None:
    vs = ViewSet([views["profile"], views["activity"]],
                 {"activity": ViewPolicy(Consistency.EVENTUAL, max_staleness_s=2)})
    assert vs.width == 5 and [(r.lo, r.hi) for r in vs.views] == [(0, 3), (3, 5)]
    assert vs.fields == (f"profile@{views['profile'].version}".encode(),
                         f"activity@{views['activity'].version}".encode())
    assert vs.views[0].strict and not vs.views[1].strict and vs.views[1].max_staleness_ns == 2 * 10**9
    assert vs.defaults.tolist() == [-1.0, 0.0, 0.0, 0.0, 0.5]


def test_view_set_rejects_mixed_entities_and_unknown_policies(views: dict[str, FeatureView]) -> None:
    with pytest.raises(FeatureError):
        ViewSet([views["profile"], views["item_stats"]])
    with pytest.raises(FeatureError):
        ViewSet([views["profile"]], {"activity": ViewPolicy()})
    with pytest.raises(FeatureError):
        ViewPolicy(max_staleness_s=-1.0)
