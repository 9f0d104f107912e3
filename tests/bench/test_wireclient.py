"""Pre-encoded binary-protocol requests and the HTTP client's pieces."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tailguard.bench.httpclient import build_request, oip_infer_body, status_from_body
from tailguard.bench.recorder import HTTP_BASE
from tailguard.bench.wireclient import FrameTemplate, request_templates, split_address
from tailguard.schema.frames import FrameReader, server_decoder
from tailguard.schema.wire import Request, Status

ENC = msgspec.msgpack.Encoder()


@given(rid=st.integers(0, 2**32 - 1), key=st.one_of(st.text(max_size=20), st.integers(-(2**40), 2**40)),
       priority=st.sampled_from(["", "critical", "bulk"]), budget=st.integers(0, 10**6))
def test_a_template_frame_decodes_to_the_request_with_its_id(rid: int, key: object, priority: str,
                                                             budget: int) -> None:
    req = Request(0, key, {"bid": 1.5}, priority, budget, "bench")
    frame = FrameTemplate(ENC, req).frame(rid)
    (payload,) = FrameReader().feed(frame)
    assert server_decoder().decode(payload) == msgspec.structs.replace(req, id=rid)


def test_templates_pair_keys_and_contexts_per_class() -> None:
    t = request_templates(["critical", "bulk"], ["a", "b", "c"], [{"x": 1.0}, {"x": 2.0}], limit=256)
    assert [len(c) for c in t] == [3, 3]
    dec = server_decoder()
    msgs = [dec.decode(FrameReader().feed(f.frame(7))[0]) for f in t[1]]
    assert [(m.keys, m.context, m.priority) for m in msgs] == [
        ("a", {"x": 1.0}, "bulk"), ("b", {"x": 2.0}, "bulk"), ("c", {"x": 1.0}, "bulk")]


def test_oip_body_carries_key_context_and_class() -> None:
    doc = json.loads(oip_infer_body("instrument", "AAPL", {"bid": 1.0, "n": 3}, priority="critical",
                                    timeout_us=300))
    assert doc == {"inputs": [
        {"name": "instrument", "shape": [1], "datatype": "BYTES", "data": ["AAPL"]},
        {"name": "bid", "shape": [1], "datatype": "FP64", "data": [1.0]},
        {"name": "n", "shape": [1], "datatype": "INT64", "data": [3]}],
        "parameters": {"priority": "critical", "timeout": 300}}
    assert "parameters" not in json.loads(oip_infer_body("item", 7, None))


def test_http_request_bytes() -> None:
    r = build_request("h:1", "/v2/models/m/infer", b"{}")
    assert r == (b"POST /v2/models/m/infer HTTP/1.1\r\nHost: h:1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 2\r\n\r\n{}")


def test_error_bodies_map_to_wire_statuses() -> None:
    assert status_from_body(503, b'{"error":"x","code":"queue_full"}') == Status.QUEUE_FULL
    assert status_from_body(500, b'{"status": 30}') == Status.MODEL_ERROR
    assert status_from_body(404, b'{"code":"not_found"}') == HTTP_BASE + 404
    assert status_from_body(502, b"<html>") == HTTP_BASE + 502


@pytest.mark.parametrize(("text", "expected"), [("127.0.0.1:80", ("127.0.0.1", 80)),
                                                ("[::1]:9", ("::1", 9)), (":7", ("127.0.0.1", 7))])
def test_addresses(text: str, expected: tuple[str, int]) -> None:
    assert split_address(text) == expected


def test_a_bad_address_is_refused() -> None:
    with pytest.raises(ValueError):
        split_address("localhost")
