"""The HTTP listener end to end: an App on a loopback port (uvloop when installed, as in
``tailguard serve``), driven by ``http.client`` and by raw sockets for pipelining and faults."""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httptools
import pytest
from inthread import InThreadServer

from tailguard.serve.app import ServeConfig

IDLE_S = 0.5
ITEM = {"name": "item", "shape": [1], "datatype": "BYTES", "data": ["a"]}
CONTEXT = [{"name": "price", "shape": [1], "datatype": "FP64", "data": [104.5]},
           {"name": "size", "shape": [1], "datatype": "FP64", "data": [3.0]}]


Server = InThreadServer


@pytest.fixture(scope="module")
def server(toy_dir: Path) -> Iterator[Server]:
    s = Server(toy_dir, ServeConfig(handshake_timeout_s=IDLE_S, max_frame=16384))
    yield s
    s.close()


def call(conn: http.client.HTTPConnection, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any, http.client.HTTPResponse]:
    raw = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    conn.request(method, path, raw, headers or {})
    r = conn.getresponse()
    data = r.read()
    ctype = r.getheader("content-type", "")
    return r.status, json.loads(data) if ctype == "application/json" else data, r


def post(body: bytes) -> bytes:
    return b"POST /v2/models/toy/infer HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


def infer_body(keys: list[str] | None = None, **top: Any) -> dict[str, Any]:
    item = dict(ITEM, shape=[len(keys)], data=keys) if keys else ITEM
    return {"inputs": [item, *CONTEXT], **top}


def read_responses(sock: socket.socket, n: int) -> list[tuple[int, bytes]]:
    """Read ``n`` complete responses from ``sock`` (status, body), in arrival order."""
    done: list[tuple[int, bytes]] = []
    body = bytearray()

    class Callbacks:
        def on_message_begin(self) -> None:
            body.clear()

        def on_body(self, chunk: bytes) -> None:
            body.extend(chunk)

        def on_message_complete(self) -> None:
            done.append((parser.get_status_code(), bytes(body)))

    parser = httptools.HttpResponseParser(Callbacks())
    while len(done) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        parser.feed_data(chunk)
    return done


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


# -- health and metadata -----------------------------------------------------------------------------
def test_health_and_metadata_share_one_keep_alive_connection(server: Server) -> None:
    c = server.client()
    assert call(c, "GET", "/v2/health/live")[:2] == (200, {"live": True, "state": "ready"})
    first_socket = c.sock
    assert call(c, "GET", "/v2/health/ready")[0] == 200
    status, meta, _ = call(c, "GET", "/v2")
    assert status == 200 and meta["name"] == "tailguard" and "binary_tensor_data" in meta["extensions"]
    assert c.sock is first_socket


def test_model_metadata_lists_entity_and_context_inputs(server: Server) -> None:
    c = server.client()
    status, meta, _ = call(c, "GET", "/v2/models/toy")
    assert status == 200 and meta["versions"] == [server.app.welcome.model_version]
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [
        ("item", "BYTES"), ("price", "FP64"), ("size", "FP64")]
    assert call(c, "GET", f"/v2/models/toy/versions/{meta['versions'][0]}")[0] == 200
    assert call(c, "GET", "/v2/models/toy/ready")[:2] == (200, {"name": "toy", "ready": True})


@pytest.mark.parametrize("path", ["/v2/models/nope", "/v2/models/toy/versions/999", "/v2/models/nope/ready"])
def test_unknown_models_and_versions_are_404(server: Server, path: str) -> None:
    status, body, _ = call(server.client(), "GET", path)
    assert status == 404 and body["code"] == "unknown_model"


def test_metrics_are_prometheus_text(server: Server) -> None:
    status, body, r = call(server.client(), "GET", "/metrics")
    assert status == 200 and r.getheader("content-type", "").startswith("text/plain")
    assert b"tailguard_" in body


def test_side_paths_can_be_switched_off(toy_dir: Path) -> None:
    """All off (the overhead benchmark's baseline): no stage recorder, no dashboard; the
    server still answers and /metrics still renders its own counters."""
    s = Server(toy_dir, ServeConfig(record_latency=False, dashboard_interval_s=0))
    try:
        assert s.app.service.latency is None and s.app.dashboard is None
        assert all(type(h).__name__ != "LatencyRecorder" for h in s.app.service.engine.hooks)
        status, _, _ = call(s.client(), "POST", "/v2/models/toy/infer", infer_body())
        assert status == 200
        status, body, _ = call(s.client(), "GET", "/metrics")
        assert status == 200 and b"tailguard_answered_total" in body
        assert b"tailguard_stage_latency_seconds_bucket" not in body  # the TYPE line only
        assert call(s.client(), "GET", "/dashboard")[0] == 404
    finally:
        s.close()


# -- inference ---------------------------------------------------------------------------------------
def test_infer_answers_one_decision(server: Server) -> None:
    status, body, _ = call(server.client(), "POST", "/v2/models/toy/infer",
                           infer_body(id="req-1", parameters={"priority": "normal", "timeout": 100_000}))
    assert status == 200 and body["id"] == "req-1" and body["model_name"] == "toy"
    (out,) = body["outputs"]
    assert (out["name"], out["shape"], out["datatype"]) == ("p", [1], "FP64") and 0 <= out["data"][0] <= 1
    assert body["parameters"]["rung"] == "primary" and body["parameters"]["status"] == "ok"
    assert set(body["parameters"]["timings_ns"]) >= {"queue", "inference", "server_total"}


def test_infer_with_several_keys_answers_a_batch(server: Server) -> None:
    status, body, _ = call(server.client(), "POST", "/v2/models/toy/versions/1/infer",
                           infer_body(["a", "b", "c"]))
    assert status == 200 and body["outputs"][0]["shape"] == [3] and len(body["parameters"]["rung"]) == 3


@pytest.mark.parametrize(("change", "status", "code", "field"), [
    ({"parameters": {"priority": "vip"}}, 400, "unknown_priority", "parameters.priority"),
    ({"inputs": [ITEM]}, 400, "invalid_request", "inputs.price"),
    ({"inputs": [dict(ITEM, datatype="FP64"), *CONTEXT]}, 400, "invalid_request", "inputs.item.datatype"),
])
def test_bad_infer_requests_name_the_field(server: Server, change: dict[str, Any], status: int, code: str,
                                           field: str) -> None:
    c = server.client()
    got, body, _ = call(c, "POST", "/v2/models/toy/infer", {**infer_body(), **change})
    assert (got, body["code"], body["field"]) == (status, code, field)
    assert call(c, "GET", "/v2/health/live")[0] == 200  # the connection goes on


def test_binary_tensors_as_tritonclient_sends_them(server: Server) -> None:
    keys = b"".join(len(k).to_bytes(4, "little") + k for k in (b"a", b"b"))
    prices = struct.pack("<2d", 104.5, 99.0)
    head = json.dumps({"id": "bin", "inputs": [
        {"name": "item", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(keys)}},
        {"name": "price", "shape": [2], "datatype": "FP64", "parameters": {"binary_data_size": len(prices)}},
        {"name": "size", "shape": [1], "datatype": "FP64", "data": [3.0]}],
        "parameters": {"binary_data_output": True}}).encode()
    status, body, _ = call(server.client(), "POST", "/v2/models/toy/infer", head + keys + prices,
                           {"Inference-Header-Content-Length": str(len(head))})
    assert status == 200 and body["id"] == "bin" and body["outputs"][0]["shape"] == [2]


def test_invalid_json_is_400(server: Server) -> None:
    status, body, _ = call(server.client(), "POST", "/v2/models/toy/infer", b"{nope")
    assert status == 400 and body["code"] == "malformed"


def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    requests, expected = [], []
    for i in range(24):
        if i % 5 == 4:
            requests.append(b"GET /v2/health/live HTTP/1.1\r\n\r\n")
            expected.append(None)
            continue
        body = json.dumps(infer_body([f"k{i}"], id=str(i),
                                     parameters={"priority": ["bulk", "critical", "normal"][i % 3]})).encode()
        requests.append(post(body))
        expected.append(str(i))
    with contextlib.closing(server.raw()) as sock:
        sock.sendall(b"".join(requests))
        got = read_responses(sock, len(requests))
    assert len(got) == len(requests)
    for (status, raw), want in zip(got, expected, strict=True):
        doc = json.loads(raw)
        if want is None:
            assert doc == {"live": True, "state": "ready"}
        elif status == 200:
            assert doc["id"] == want
        else:  # a tight class budget may run out on a cold server: still answered in its place
            assert status in (429, 504) and doc["code"] in ("expired", "predicted_late")


# -- faults ------------------------------------------------------------------------------------------
def test_an_idle_connection_is_closed(server: Server) -> None:
    with contextlib.closing(server.raw()) as sock:
        assert closed_by_server(sock)  # after handshake_timeout_s of silence


def test_an_unfinished_request_gets_408(server: Server) -> None:
    with contextlib.closing(server.raw()) as sock:
        sock.sendall(b"POST /v2/models/toy/infer HTTP/1.1\r\ncontent-length: 100\r\n\r\n{")
        assert [s for s, _ in read_responses(sock, 1)] == [408]
        assert closed_by_server(sock)


def test_a_client_vanishing_mid_request_breaks_nothing(server: Server) -> None:
    with contextlib.closing(server.raw()) as sock:
        sock.sendall(b"POST /v2/models/toy/infer HTTP/1.1\r\ncontent-length: 100\r\n\r\n{")
    with contextlib.closing(server.raw()) as sock:  # and one that leaves with answers owed
        body = json.dumps(infer_body()).encode()
        sock.sendall(post(body) * 20)
    status, _, _ = call(server.client(), "POST", "/v2/models/toy/infer", infer_body())
    assert status == 200


def test_a_body_over_max_frame_is_413_and_closes(server: Server) -> None:
    with contextlib.closing(server.raw()) as sock:
        sock.sendall(b"POST /v2/models/toy/infer HTTP/1.1\r\ncontent-length: 16385\r\n\r\n")
        assert [s for s, _ in read_responses(sock, 1)] == [413]
        assert closed_by_server(sock)


# -- refusals with a retry-after ---------------------------------------------------------------------
@pytest.fixture
def limited(toy_dir: Path, tmp_path: Path) -> Iterator[Server]:
    svc = Path(shutil.copytree(toy_dir, tmp_path / "svc"))
    with (svc / "service.toml").open("a") as f:
        f.write("\n[serving.rate_limit]\nrate = 0.5\nburst = 1\n")
    s = Server(svc, ServeConfig())
    yield s
    s.close()


def test_a_rate_limited_client_gets_429_with_retry_after(limited: Server) -> None:
    c = limited.client()
    headers = {"x-client-id": "desk-1"}
    assert call(c, "POST", "/v2/models/toy/infer", infer_body(), headers)[0] == 200
    status, body, r = call(c, "POST", "/v2/models/toy/infer", infer_body(), headers)
    assert status == 429 and body["code"] == "rate_limited"
    assert r.getheader("retry-after") == "2"  # 0.5 requests per second: ~2 s, rounded up
    assert 1000 < float(r.getheader("retry-after-ms", "0")) <= 2000
    other = call(c, "POST", "/v2/models/toy/infer", infer_body(parameters={"client_id": "desk-2"}), headers)
    assert other[0] == 200  # the parameter names another client than the header
