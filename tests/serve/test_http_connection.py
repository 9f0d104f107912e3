"""``HttpConnection`` on a recording transport: ordering, limits, faults, drain and flow control.

The app is real (toy service, real dispatcher) on a fake clock, and its loop is not running: a
test feeds bytes, then turns the loop until the dispatcher is idle, so "answered later" is
exact and no deadline passes while a test runs.  The
dispatcher runs one batch inline at the end of each read (the highest class first), so a
``bulk`` request ahead of a ``critical`` one in the same read is still queued afterwards.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httptools
import pytest

from tailguard import load_service
from tailguard.serve.app import App, ServeConfig, State
from tailguard.serve.http import MAX_HEADER_BYTES, MAX_PIPELINE, MAX_URL, HttpConnection
from tailguard.testing import FakeClock

MAX_BODY = 4096


class Recorder(asyncio.Transport):
    """A transport that records what is written and whether reading is paused."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.reading = True
        self.pauses = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "written after close"
        self.out += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Response:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""

    def json(self) -> Any:
        return json.loads(self.body)


def parse(data: bytes) -> list[Response]:
    """Split a byte stream into HTTP responses (none of them to HEAD)."""
    out: list[Response] = []

    class Callbacks:
        def on_message_begin(self) -> None:
            out.append(Response())

        def on_header(self, name: bytes, value: bytes) -> None:
            out[-1].headers[name.decode().lower()] = value.decode()

        def on_headers_complete(self) -> None:
            out[-1].status = parser.get_status_code()

        def on_body(self, body: bytes) -> None:
            out[-1].body += body

    parser = httptools.HttpResponseParser(Callbacks())
    parser.feed_data(bytes(data))
    return out


def serving(toy_dir: Path) -> Iterator[App]:
    loop = asyncio.new_event_loop()
    a = App(load_service(toy_dir, clock=FakeClock(), freeze_gc=False), ServeConfig(max_frame=MAX_BODY), loop)
    a.state = State.READY
    yield a
    a.stop()
    loop.close()


@pytest.fixture(scope="module")
def app(toy_dir: Path) -> Iterator[App]:
    yield from serving(toy_dir)


@pytest.fixture
def draining(toy_dir: Path) -> Iterator[App]:
    for a in serving(toy_dir):
        a.state = State.DRAINING
        a.dispatcher.start_draining()
        yield a


def connect(app: App) -> tuple[HttpConnection, Recorder]:
    conn = HttpConnection(app)
    t = Recorder()
    conn.connection_made(t)
    return conn, t


def settle(app: App) -> None:
    """Turn the loop until every admitted request is answered (no sleeping)."""

    async def turns() -> None:
        for _ in range(10_000):
            if app.dispatcher.idle:
                return
            await asyncio.sleep(0)

    app.loop.run_until_complete(turns())


def infer(item: str = "a", oip_id: str = "", extra: str = "", **parameters: Any) -> bytes:
    body = json.dumps({"id": oip_id, "parameters": parameters, "inputs": [
        {"name": "item", "shape": [1], "datatype": "BYTES", "data": [item]},
        {"name": "price", "shape": [1], "datatype": "FP64", "data": [104.5]},
        {"name": "size", "shape": [1], "datatype": "FP64", "data": [3.0]}]}).encode()
    return (f"POST /v2/models/toy/infer HTTP/1.1\r\nhost: t\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: t\r\n{extra}\r\n".encode()


# -- ordering ----------------------------------------------------------------------------------------
def test_pipelined_responses_leave_in_request_order(app: App) -> None:
    conn, t = connect(app)
    bad = infer(oip_id="bad").replace(b'"FP64"', b'"FP65"')
    conn.data_received(infer(oip_id="first", priority="bulk") + get("/v2/health/live") + bad
                       + infer(oip_id="last", priority="critical"))
    assert t.out == b""  # three answers are ready, but wait behind the still queued bulk request
    settle(app)
    got = parse(t.out)
    assert [r.status for r in got] == [200, 200, 400, 200]
    assert got[0].json()["id"] == "first" and got[3].json()["id"] == "last"
    assert not t.closed


def test_responses_written_together_go_out_in_one_write(app: App) -> None:
    conn, t = connect(app)
    writes: list[int] = []
    original = t.write
    t.write = lambda data: (writes.append(len(data)), original(data))  # type: ignore[method-assign]
    conn.data_received(get("/v2/health/live") * 5)
    assert len(writes) == 1 and len(parse(t.out)) == 5


def test_a_request_split_across_reads_is_answered_once(app: App) -> None:
    conn, t = connect(app)
    raw = infer(oip_id="s")
    for i in range(0, len(raw), 7):
        conn.data_received(raw[i : i + 7])
    settle(app)
    assert [r.json()["id"] for r in parse(t.out)] == ["s"]


# -- connection management ---------------------------------------------------------------------------
def test_connection_close_is_honoured_and_later_requests_are_not_read(app: App) -> None:
    conn, t = connect(app)
    conn.data_received(get("/v2/health/live", "connection: close\r\n") + get("/v2"))
    got = parse(t.out)
    assert [r.status for r in got] == [200] and got[0].headers["connection"] == "close"
    assert t.closed


def test_http_1_0_closes_after_the_response(app: App) -> None:
    conn, t = connect(app)
    conn.data_received(b"GET /v2/health/live HTTP/1.0\r\n\r\n")
    assert parse(t.out)[0].status == 200 and t.closed


def test_malformed_http_gets_400_and_closes(app: App) -> None:
    conn, t = connect(app)
    conn.data_received(get("/v2") + b"NOT HTTP AT ALL\r\n\r\n")
    got = parse(t.out)
    assert [r.status for r in got] == [200, 400] and got[1].json()["code"] == "malformed"
    assert t.closed


def test_a_declared_body_over_the_limit_gets_413_before_it_arrives(app: App) -> None:
    conn, t = connect(app)
    head = f"POST /v2/models/toy/infer HTTP/1.1\r\ncontent-length: {MAX_BODY + 1}\r\n\r\n"
    conn.data_received(head.encode())
    got = parse(t.out)
    assert [r.status for r in got] == [413] and got[0].json()["code"] == "frame_too_large" and t.closed


def test_an_overlong_request_target_gets_414(app: App) -> None:
    conn, t = connect(app)
    conn.data_received(b"GET /v2/" + b"x" * MAX_URL)
    assert [r.status for r in parse(t.out)] == [414] and t.closed


def test_overlong_headers_get_431(app: App) -> None:
    conn, t = connect(app)
    filler = b"x-filler: %s\r\n" % (b"y" * 1000)
    conn.data_received(b"GET /v2 HTTP/1.1\r\n" + filler * (MAX_HEADER_BYTES // 1000 + 2))
    assert [r.status for r in parse(t.out)] == [431] and t.closed


def test_an_upgrade_request_is_answered_then_closed(app: App) -> None:
    conn, t = connect(app)
    conn.data_received(get("/v2/health/live", "upgrade: h2c\r\nconnection: Upgrade\r\n") + b"PRI * HTTP/2.0")
    assert [r.status for r in parse(t.out)] == [200] and t.closed


def test_a_chunked_body_over_the_limit_gets_413(app: App) -> None:
    conn, t = connect(app)
    conn.data_received(b"POST /v2/models/toy/infer HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n")
    chunk = b"x" * 1000
    for _ in range(5):
        conn.data_received(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    assert [r.status for r in parse(t.out)] == [413] and t.closed


def test_a_chunked_body_is_accepted(app: App) -> None:
    conn, t = connect(app)
    body = infer().split(b"\r\n\r\n", 1)[1]
    conn.data_received(b"POST /v2/models/toy/infer HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
                       + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    settle(app)
    assert [r.status for r in parse(t.out)] == [200]


def test_expect_100_continue_gets_the_go_ahead(app: App) -> None:
    conn, t = connect(app)
    raw = infer(extra="expect: 100-continue\r\n")
    head, body = raw.split(b"\r\n\r\n", 1)
    conn.data_received(head + b"\r\n\r\n")
    assert t.out == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.data_received(body)
    settle(app)
    assert [r.status for r in parse(t.out)] == [100, 200]


def test_head_gets_405_without_a_body(app: App) -> None:
    conn, t = connect(app)
    conn.data_received(b"HEAD /v2 HTTP/1.1\r\n\r\n")
    head, _, rest = bytes(t.out).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405") and b"allow: GET" in head and rest == b""


@pytest.mark.parametrize(("raw", "status"), [
    (get("/v2/models/toy/infer"), 405), (b"POST /v2 HTTP/1.1\r\ncontent-length: 0\r\n\r\n", 405),
    (get("/v3/anything"), 404), (get("/v2/models/toy/config"), 404), (get("/"), 404),
])
def test_wrong_methods_and_unknown_paths(app: App, raw: bytes, status: int) -> None:
    conn, t = connect(app)
    conn.data_received(raw)
    assert [r.status for r in parse(t.out)] == [status] and not t.closed


def test_a_compressed_body_is_refused(app: App) -> None:
    conn, t = connect(app)
    conn.data_received(infer(extra="content-encoding: gzip\r\n"))
    assert [r.status for r in parse(t.out)] == [415]


# -- faults and lifecycle ----------------------------------------------------------------------------
def test_a_vanished_client_costs_nothing(app: App) -> None:
    conn, t = connect(app)
    abandoned = app.dispatcher.abandoned
    conn.data_received(infer(priority="bulk") * 3 + infer(priority="critical"))
    conn.connection_lost(None)  # the critical answer was waiting behind the bulk ones
    settle(app)
    assert t.out == b"" and app.dispatcher.abandoned == abandoned + 3
    assert conn not in app.connections


def test_a_vanished_client_mid_request_costs_nothing(app: App) -> None:
    conn, t = connect(app)
    conn.data_received(infer()[:-10])
    conn.connection_lost(None)
    conn.data_received(b"late bytes")
    assert t.out == b""


def test_while_draining_ready_is_503_and_responses_close(draining: App) -> None:
    conn, t = connect(draining)
    conn.notice("draining")
    conn.data_received(get("/v2/health/ready") + get("/v2/health/live"))
    got = parse(t.out)
    assert [r.status for r in got] == [503] and got[0].headers["connection"] == "close"
    assert got[0].json() == {"ready": False, "state": "draining"} and t.closed


def test_while_draining_new_requests_get_503_draining(draining: App) -> None:
    conn, t = connect(draining)
    conn.data_received(infer())
    got = parse(t.out)
    assert [r.status for r in got] == [503] and got[0].json()["code"] == "draining"
    assert got[0].headers["connection"] == "close" and t.closed


def test_a_client_that_stops_reading_stops_its_own_reads(app: App) -> None:
    conn, t = connect(app)
    conn.pause_writing()
    assert not t.reading
    conn.resume_writing()
    assert t.reading


def test_deep_pipelines_pause_reading_until_answered(app: App) -> None:
    conn, t = connect(app)
    conn.data_received(infer(priority="bulk") * (MAX_PIPELINE + 4))
    assert t.pauses == 1
    settle(app)
    assert t.reading and len(parse(t.out)) == MAX_PIPELINE + 4
