"""Traces and JSON logs of a real server: an App serving TCP and HTTP on loopback in this
process (so its spans land in an in-memory exporter), and ``tailguard serve`` as a child
process exporting OTLP/HTTP to a tiny collector and writing its JSON log."""

from __future__ import annotations

import asyncio
import http.client
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from rawclient import CTX, RawClient

from tailguard import load_service
from tailguard.client import Client
from tailguard.observe.tracecontext import format_traceparent
from tailguard.observe.tracing import STAGE_SPANS
from tailguard.schema.wire import Status
from tailguard.serve.app import App, ServeConfig
from tailguard.serve.process import ServerProcess

TRACE_TCP, TRACE_HTTP, TRACE_CLIENT = 0x11 << 100 | 1, 0x22 << 100 | 2, 0x33 << 100 | 3
PARENT = 0xB7AD6B7169203331
INFER = {"inputs": [{"name": "item", "shape": [1], "datatype": "BYTES", "data": ["a"]},
                    {"name": "price", "shape": [1], "datatype": "FP64", "data": [104.5]},
                    {"name": "size", "shape": [1], "datatype": "FP64", "data": [3.0]}]}


class InProcessServer:
    """An App on TCP and HTTP (127.0.0.1, free ports) run by a loop in a background thread,
    tracing to an in-memory exporter (ratio 0: only sampled parents are traced)."""

    def __init__(self, service_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.exporter = InMemorySpanExporter()
        service = load_service(service_dir, freeze_gc=False)
        socks = []
        for kind in ("tcp", "http"):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            sock.setblocking(False)
            socks.append((kind, sock))
        self.tcp = f"127.0.0.1:{socks[0][1].getsockname()[1]}"
        self.http_port = socks[1][1].getsockname()[1]

        async def start() -> App:
            app = App(service, ServeConfig(trace_sample=0.0), self.loop)
            app.trace(self.exporter)
            await app.start(socks)
            return app

        self.app = asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)

    def spans(self) -> list[ReadableSpan]:
        """Stop the app (its tracer drains and exports everything) and return the spans."""
        self.loop.call_soon_threadsafe(self.app.stop)
        asyncio.run_coroutine_threadsafe(self.app.wait_stopped(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        return list(self.exporter.get_finished_spans())


@pytest.fixture
def served(toy_dir: Path) -> Iterator[InProcessServer]:
    s = InProcessServer(toy_dir)
    yield s
    if not s.loop.is_closed():
        s.spans()


def tree(spans: list[ReadableSpan], trace_id: int) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The server span of ``trace_id`` and its children in start order."""
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER and s.context.trace_id == trace_id]
    mine = [s for s in spans if s.parent is not None and s.parent.span_id == server.context.span_id]
    children = sorted(mine, key=lambda s: s.start_time or 0)
    return server, children


def test_requests_over_tcp_and_http_become_span_trees_under_their_parents(served: InProcessServer) -> None:
    raw = RawClient(served.tcp)
    reply = raw.request(1, "a", context=CTX, traceparent=format_traceparent(TRACE_TCP, PARENT))
    assert reply.status == Status.OK
    assert raw.request(2, "b", context=CTX, traceparent=format_traceparent(TRACE_TCP, PARENT, 0)).status == 0
    assert raw.request(3, "c", context=CTX).status == Status.OK  # no parent, ratio 0: not traced
    raw.close()
    conn = http.client.HTTPConnection("127.0.0.1", served.http_port, timeout=10)
    conn.request("POST", "/v2/models/toy/infer", json.dumps(INFER),
                 {"traceparent": format_traceparent(TRACE_HTTP, PARENT), "x-client-id": "web"})
    assert conn.getresponse().read() and conn.sock is not None
    conn.close()
    with Client(served.tcp) as client:
        client.predict("d", CTX, priority="bulk", traceparent=format_traceparent(TRACE_CLIENT, PARENT))
    spans = served.spans()
    assert len([s for s in spans if s.kind is SpanKind.SERVER]) == 3
    for trace_id in (TRACE_TCP, TRACE_HTTP, TRACE_CLIENT):
        server, children = tree(spans, trace_id)
        assert server.parent is not None and server.parent.span_id == PARENT and server.parent.is_remote
        assert [c.name for c in children] == list(STAGE_SPANS)
        assert all(c.context.trace_id == trace_id for c in children)
        assert (server.start_time or 0) <= (children[0].start_time or 0)
        assert (children[-1].end_time or 0) <= (server.end_time or 0)
        attrs = server.attributes or {}
        assert attrs["tailguard.status"] == "ok" and attrs["tailguard.batch_size"] >= 1
        assert attrs["tailguard.model_version"] == reply.model_version
        assert attrs["tailguard.rung"] in served.app.welcome.rungs
    assert (tree(spans, TRACE_TCP)[0].attributes or {})["tailguard.request_id"] == 1
    assert (tree(spans, TRACE_HTTP)[0].attributes or {})["tailguard.client_id"] == "web"
    assert (tree(spans, TRACE_CLIENT)[0].attributes or {})["tailguard.priority"] == "bulk"


def test_a_bad_traceparent_is_answered_normally_and_counted(served: InProcessServer) -> None:
    raw = RawClient(served.tcp)
    assert raw.request(1, "a", context=CTX, traceparent="00-zz-01").status == Status.OK
    raw.close()
    conn = http.client.HTTPConnection("127.0.0.1", served.http_port, timeout=10)
    conn.request("POST", "/v2/models/toy/infer", json.dumps(INFER), {"traceparent": "nonsense"})
    assert conn.getresponse().status == 200
    conn.close()
    assert served.spans() == []
    assert served.app.statistics()["tracing"]["bad_traceparent"] == 2


# -- the command: OTLP/HTTP to a collector, JSON log to a file --------------------------------------
class Collector(http.server.ThreadingHTTPServer):
    """Accepts OTLP/HTTP protobuf exports on /v1/traces and keeps the decoded requests."""

    def __init__(self) -> None:
        self.exports: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.paths.append(self.path)
                outer.exports.append(ExportTraceServiceRequest.FromString(body))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        super().__init__(("127.0.0.1", 0), Handler)


def test_tailguard_serve_exports_otlp_and_writes_its_json_log(toy_dir: Path, tmp_path: Path) -> None:
    collector = Collector()
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    log = tmp_path / "serve.jsonl"
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    try:
        with ServerProcess.start(toy_dir, "--tcp", "127.0.0.1:0", "--otlp-endpoint", endpoint,
                                 "--trace-sample", "0", "--log-json", str(log)) as proc:
            assert proc.tcp is not None
            c = RawClient(proc.tcp)
            tp = format_traceparent(TRACE_TCP, PARENT)
            assert c.request(1, "a", context=CTX, traceparent=tp).status == Status.OK
            bad = c.request(2, "a", context=CTX, priority="nope", traceparent=tp)
            assert bad.status == Status.UNKNOWN_PRIORITY
            proc.terminate()
            assert proc.wait(30) == 0
    finally:
        collector.shutdown()
    assert set(collector.paths) == {"/v1/traces"}
    spans = [s for e in collector.exports for rs in e.resource_spans for scope in rs.scope_spans
             for s in scope.spans]
    servers = [s for s in spans if s.kind == s.SPAN_KIND_SERVER]
    assert len(servers) == 2 and len(spans) == 2 + len(STAGE_SPANS)
    assert all(int.from_bytes(s.trace_id, "big") == TRACE_TCP for s in spans)
    assert all(int.from_bytes(s.parent_span_id, "big") == PARENT for s in servers)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    names = [e["event"] for e in events]
    assert names[:2] == ["server.start", "server.ready"] and names[-2:] == ["server.drain", "server.stop"]
    (bad,) = [e for e in events if e["event"] == "request.invalid"]
    assert (bad["request_id"], bad["trace_id"], bad["status"]) == (2, f"{TRACE_TCP:032x}", "unknown_priority")
    assert len({e["pid"] for e in events}) == 1 and events[0]["tracing"] is True
