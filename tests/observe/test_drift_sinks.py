"""Alert sinks against real receivers: a JSON log line, a webhook POST to a local HTTP server,
a NATS publish to a real nats-server; a full queue drops (counted), a dead receiver counts as
failed, and ``send`` never blocks or raises."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from services import NatsServer, free_port, require_nats_server

from tailguard.observe.alerts import AlertEvent
from tailguard.observe.sinks import LogSink, NatsSink, WebhookSink, build_sinks
from tailguard.spec import DriftSinkSpec


def event(i: int = 0, state: str = "alert") -> AlertEvent:
    return AlertEvent(service="svc", signal=f"psi:a.x{i}", state=state, value=0.5, threshold=0.25,
                      window=i, wall_ns=1_700_000_000_000_000_000 + i)


# -- log ------------------------------------------------------------------------------------------
def test_log_sink_writes_one_json_line_per_event() -> None:
    out = io.StringIO()
    sink = LogSink(out)
    sink.send(event(1))
    sink.send(event(2, "clear"))
    lines = out.getvalue().splitlines()
    assert [json.loads(line)["signal"] for line in lines] == ["psi:a.x1", "psi:a.x2"]
    assert json.loads(lines[1])["state"] == "clear"
    assert sink.statistics() == {"sent": 2, "failed": 0, "dropped": 0}


def test_log_sink_logs_alerts_as_warnings(caplog: pytest.LogCaptureFixture) -> None:
    sink = LogSink()
    with caplog.at_level(logging.INFO, logger="tailguard.drift"):
        sink.send(event(1))
        sink.send(event(2, "clear"))
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]
    assert json.loads(caplog.records[0].getMessage())["window"] == 1


def test_log_sink_on_a_closed_stream_counts_a_failure() -> None:
    out = io.StringIO()
    out.close()
    sink = LogSink(out)
    sink.send(event())
    assert sink.statistics()["failed"] == 1


# -- webhook --------------------------------------------------------------------------------------
class Receiver:
    """A local HTTP server recording POST bodies; ``hold`` makes handlers wait for ``release``."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.status = status
        self.hold = False
        self.arrived = threading.Event()
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.arrived.set()
                if owner.hold:
                    owner.release.wait(10)
                owner.bodies.append(json.loads(body))
                owner.headers.append(dict(self.headers))
                self.send_response(owner.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def test_webhook_posts_every_event_as_json(receiver: Receiver) -> None:
    sink = WebhookSink(receiver.url, timeout_s=5.0, headers={"Authorization": "Bearer t"})
    for i in range(3):
        sink.send(event(i))
    sink.close()  # delivers what is queued
    assert [b["signal"] for b in receiver.bodies] == ["psi:a.x0", "psi:a.x1", "psi:a.x2"]
    assert receiver.bodies[0]["service"] == "svc" and receiver.bodies[0]["value"] == 0.5
    assert receiver.headers[0]["Authorization"] == "Bearer t"
    assert receiver.headers[0]["Content-Type"] == "application/json"
    assert sink.statistics() == {"sent": 3, "failed": 0, "dropped": 0, "queued": 0}


def test_a_full_webhook_queue_drops_and_counts(receiver: Receiver) -> None:
    receiver.hold = True
    sink = WebhookSink(receiver.url, timeout_s=5.0, queue_size=2)
    sink.send(event(0))
    assert receiver.arrived.wait(10)  # the first is being delivered (held by the receiver)
    for i in range(1, 6):
        sink.send(event(i))  # two fit in the queue, three are dropped: send returns at once
    assert sink.statistics()["dropped"] == 3 and sink.statistics()["queued"] == 2
    receiver.release.set()
    sink.close()
    assert [b["window"] for b in receiver.bodies] == [0, 1, 2]
    assert sink.statistics() == {"sent": 3, "failed": 0, "dropped": 3, "queued": 0}
    sink.send(event(9))  # after close: dropped, not raised
    assert sink.statistics()["dropped"] == 4


def test_webhook_error_answers_and_dead_receivers_count_as_failed() -> None:
    bad = Receiver(status=500)
    try:
        sink = WebhookSink(bad.url, timeout_s=5.0)
        sink.send(event())
        sink.close()
        assert sink.statistics()["failed"] == 1 and sink.statistics()["sent"] == 0
    finally:
        bad.stop()
    dead = WebhookSink(f"http://127.0.0.1:{free_port()}/hook", timeout_s=2.0)
    dead.send(event())
    dead.close()
    assert dead.statistics()["failed"] == 1


# -- NATS -----------------------------------------------------------------------------------------
@pytest.fixture
def natsd(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(require_nats_server(), tmp_path / "jetstream")
    yield server
    server.kill()


def test_nats_sink_publishes_events_on_the_subject(natsd: NatsServer) -> None:
    nats = pytest.importorskip("nats")

    async def scenario() -> list[dict[str, Any]]:
        nc = await nats.connect(natsd.url)
        sub = await nc.subscribe("tailguard.drift.svc")
        await nc.flush()
        sink = NatsSink(natsd.url, "tailguard.drift.svc", timeout_s=5.0)
        for i in range(3):
            sink.send(event(i))
        got = [json.loads((await sub.next_msg(timeout=10)).data) for _ in range(3)]
        await asyncio.to_thread(sink.close)
        await nc.close()
        assert sink.statistics() == {"sent": 3, "failed": 0, "dropped": 0, "queued": 0}
        return got

    got = asyncio.run(scenario())
    assert [g["window"] for g in got] == [0, 1, 2] and got[0]["signal"] == "psi:a.x0"


def test_nats_sink_without_a_server_counts_failures_and_returns() -> None:
    pytest.importorskip("nats")
    sink = NatsSink(f"nats://127.0.0.1:{free_port()}", "tailguard.drift.svc", timeout_s=1.0, queue_size=2)
    for i in range(2):
        sink.send(event(i))
    sink.close()
    s = sink.statistics()
    assert s["sent"] == 0 and s["failed"] == 2 and s["queued"] == 0


def test_a_full_nats_queue_drops_and_counts() -> None:
    pytest.importorskip("nats")
    import socket

    # A listener that never answers: the first connect waits (its event stays queued).
    mute = socket.create_server(("127.0.0.1", 0))
    sink = NatsSink(f"nats://127.0.0.1:{mute.getsockname()[1]}", "x", timeout_s=30.0, queue_size=3)
    try:
        for i in range(10):
            sink.send(event(i))  # returns at once: 3 queued, 7 dropped
        assert sink.statistics()["dropped"] == 7 and sink.statistics()["queued"] == 3
    finally:
        mute.close()  # the pending connect is refused now: close() returns promptly
    sink.close()
    s = sink.statistics()
    assert (s["sent"], s["dropped"], s["queued"]) == (0, 7, 0) and s["failed"] == 3


# -- from the spec --------------------------------------------------------------------------------
def test_build_sinks_follows_the_spec(receiver: Receiver) -> None:
    sinks = build_sinks([DriftSinkSpec(kind="log"), DriftSinkSpec(kind="webhook", url=receiver.url),
                         DriftSinkSpec(kind="nats", url="nats://127.0.0.1:1")], "svc")
    try:
        assert [type(s).__name__ for s in sinks] == ["LogSink", "WebhookSink", "NatsSink"]
        assert isinstance(sinks[2], NatsSink) and sinks[2].subject == "tailguard.drift.svc"
    finally:
        for s in sinks:
            s.close()
