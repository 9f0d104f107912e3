"""Property tests: no body and no byte stream makes the OIP decoder or the HTTP connection raise.

Random bytes, random JSON values and near-valid OIP requests must each decode to a request or
be refused with a 4xx status; random and mangled HTTP streams, cut at random places, must only
ever produce well-formed responses below 500.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_http_connection import Recorder, parse, settle

from tailguard import load_service
from tailguard.schema.wire import Request, Welcome
from tailguard.serve.app import App, ServeConfig, State
from tailguard.serve.http import HttpConnection
from tailguard.serve.oip import HTTP_STATUS, OipModel
from tailguard.serve.tensors import OipError
from tailguard.testing import FakeClock

WELCOME = Welcome(1, "t", "toy", 1 << 20, 0, ["item"], ["price", "size"], ["p"],
                  ["primary", "fast", "last_good", "default"], ["critical", "normal", "bulk"], "1")
MODEL = OipModel(WELCOME, {"item": "str"}, "0")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
names = st.sampled_from(["item", "price", "size", "other", ""])
datatypes = st.sampled_from(["BYTES", "FP64", "FP32", "INT64", "BOOL", "FP8"])
scalars = st.one_of(st.text(max_size=4), st.floats(allow_nan=False), st.integers(-(2**70), 2**70),
                    st.booleans(), st.none())
tensor = st.fixed_dictionaries(
    {"name": names, "datatype": datatypes,
     "shape": st.lists(st.integers(-1, 4), max_size=3),
     "data": st.one_of(scalars, st.lists(scalars, max_size=5),
                       st.lists(st.lists(scalars, max_size=3), max_size=3))},
    optional={"parameters": st.dictionaries(st.sampled_from(["binary_data_size", "x"]), st.integers(-1, 9))},
)
oip_bodies = st.fixed_dictionaries(
    {"inputs": st.lists(tensor, max_size=4)},
    optional={"id": st.one_of(st.text(max_size=4), st.integers()),
              "parameters": st.dictionaries(st.sampled_from(["priority", "timeout", "client_id"]), scalars),
              "outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["p", "q"])}), max_size=2)},
)


def decodes_or_refuses(raw: bytes, header_len: int | None = None) -> Request | None:
    try:
        req, call = MODEL.decode(raw, header_len, 1)
    except OipError as exc:
        assert 400 <= HTTP_STATUS[exc.status] < 500
        return None
    assert req.batch == call.batch and isinstance(req.keys, list) == req.batch
    return req


@given(st.binary(max_size=300), st.none() | st.integers(0, 300))
def test_random_bytes_are_decoded_or_refused(raw: bytes, header_len: int | None) -> None:
    decodes_or_refuses(raw, header_len)


@given(json_values)
def test_random_json_is_decoded_or_refused(value: Any) -> None:
    decodes_or_refuses(json.dumps(value).encode())


@given(oip_bodies)
def test_near_valid_requests_are_decoded_or_refused(body: dict[str, Any]) -> None:
    decodes_or_refuses(json.dumps(body).encode())


@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=6), st.data())
def test_valid_requests_always_decode(keys: list[str], data: st.DataObject) -> None:
    prices = data.draw(st.lists(st.floats(-1e9, 1e9), min_size=len(keys), max_size=len(keys)))
    body = {"inputs": [
        {"name": "item", "shape": [len(keys)], "datatype": "BYTES", "data": keys},
        {"name": "price", "shape": [len(keys)], "datatype": "FP64", "data": prices},
        {"name": "size", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    req = decodes_or_refuses(json.dumps(body).encode())
    assert req is not None and req.batch == (len(keys) > 1)


# -- the whole connection ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app(toy_dir: Path) -> Iterator[App]:
    loop = asyncio.new_event_loop()
    a = App(load_service(toy_dir, clock=FakeClock(), freeze_gc=False), ServeConfig(max_frame=2048), loop)
    a.state = State.READY
    yield a
    a.stop()
    loop.close()


def _infer(body: dict[str, Any]) -> bytes:
    raw = json.dumps(body).encode()
    return b"POST /v2/models/toy/infer HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (len(raw), raw)


_GOOD = [
    b"GET /v2/health/ready HTTP/1.1\r\nhost: x\r\n\r\n",
    b"GET /v2/models/toy/versions/1 HTTP/1.1\r\n\r\n",
    _infer({"inputs": [{"name": "item", "shape": [1], "datatype": "BYTES", "data": ["k"]},
                       {"name": "price", "shape": [1], "datatype": "FP64", "data": [1.0]},
                       {"name": "size", "shape": [1], "datatype": "FP64", "data": [2.0]}]}),
]
pieces = st.one_of(st.sampled_from(_GOOD), st.binary(max_size=40), oip_bodies.map(_infer),
                   st.sampled_from([b"\r\n", b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n", b"POST ",
                                    b"content-length: 99999\r\n", b"Expect: 100-continue\r\n"]))


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=150)
@given(st.lists(pieces, max_size=6), st.lists(st.integers(1, 64), max_size=8), st.booleans())
def test_any_byte_stream_gets_only_well_formed_answers(app: App, stream: list[bytes], cuts: list[int],
                                                        vanish: bool) -> None:
    conn = HttpConnection(app)
    t = Recorder()
    conn.connection_made(t)
    raw = b"".join(stream)
    at = 0
    for n in [*cuts, len(raw)]:
        conn.data_received(raw[at : at + n])
        at += n
    if vanish:
        conn.connection_lost(None)
    settle(app)
    for r in parse(bytes(t.out)):
        assert 100 <= r.status < 500
    conn.connection_lost(None)
    assert conn not in app.connections
