"""Wire messages: round trips, tags, stable status codes, and a decoder that refuses garbage
with msgspec's errors only (never anything else)."""

from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tailguard.schema.frames import client_decoder, server_decoder
from tailguard.schema.wire import (
    PROTOCOL_VERSIONS,
    Hello,
    Notice,
    Ping,
    Pong,
    Refused,
    Reply,
    Request,
    Status,
    Welcome,
)

ENC = msgspec.msgpack.Encoder()

keys = st.one_of(st.text(max_size=20), st.integers(-(2**63), 2**63 - 1),
                 st.lists(st.text(max_size=5), max_size=5))
contexts = st.one_of(st.none(), st.dictionaries(st.text(max_size=8), st.floats(allow_nan=False), max_size=4))


@given(st.integers(0, 2**64 - 1), keys, contexts, st.text(max_size=10), st.integers(0, 10**9),
       st.text(max_size=10), st.booleans(), st.booleans())
def test_a_request_survives_the_wire(rid: int, key: object, ctx: dict[str, float] | None, priority: str,
                                     budget: int, client: str, batch: bool, idempotent: bool) -> None:
    req = Request(rid, key, ctx, priority, budget, client, batch, idempotent=idempotent)
    assert server_decoder().decode(ENC.encode(req)) == req


@given(st.integers(0, 2**64 - 1), st.sampled_from(list(Status)),
       st.lists(st.floats(allow_nan=False), max_size=8), st.lists(st.integers(0, 10**9), max_size=6))
def test_a_reply_survives_the_wire(
    rid: int, status: Status, outputs: list[float], timings: list[int]
) -> None:
    reply = Reply(rid, int(status), outputs, len(outputs), "m/1", [0] * len(outputs), [0] * len(outputs),
                  timings, 5, "why", "field")
    assert client_decoder().decode(ENC.encode(reply)) == reply


@pytest.mark.parametrize("msg", [Hello("tailguard", list(PROTOCOL_VERSIONS), "c"), Ping(3)])
def test_the_server_decoder_tells_client_messages_apart(msg: object) -> None:
    assert server_decoder().decode(ENC.encode(msg)) == msg


@pytest.mark.parametrize("msg", [
    Welcome(1, "tailguard/x", "svc", 1024, 7, ["e"], ["c"], ["p"], ["primary"], ["normal"], "1"),
    Refused(16, "no"), Pong(1, "ready", 0), Notice("draining"),
])
def test_the_client_decoder_tells_server_messages_apart(msg: object) -> None:
    assert client_decoder().decode(ENC.encode(msg)) == msg


@given(st.binary(max_size=200))
def test_random_bytes_are_refused_with_a_decode_or_validation_error(data: bytes) -> None:
    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
        server_decoder().decode(data)


msgpack_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=10),
              st.binary(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=6),
                            st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=20,
)


@given(msgpack_values)
def test_well_formed_msgpack_of_the_wrong_shape_is_refused_cleanly(value: object) -> None:
    with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
        server_decoder().decode(ENC.encode(value))


def test_status_codes_are_stable() -> None:
    assert {s.code: int(s) for s in Status} == {
        "ok": 0, "invalid_request": 10, "unknown_priority": 11, "unknown_model": 12, "feature_error": 13,
        "frame_too_large": 14, "malformed": 15, "unsupported_version": 16, "queue_full": 20,
        "rate_limited": 21, "predicted_late": 22, "expired": 23, "shed_overload": 24, "draining": 25,
        "model_error": 30, "budget_exhausted": 31, "internal": 32,
    }


def test_only_20_and_up_are_retryable() -> None:
    assert [s for s in Status if s.retryable] == [s for s in Status if int(s) >= 20]
