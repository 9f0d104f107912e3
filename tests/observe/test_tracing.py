"""The tracer: reply-path sampling and queueing, spans built on the side path (explicit times
on a fake clock, exported to the SDK's in-memory exporter), drops, bad headers, wiring."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tailguard import load_service
from tailguard.observe.tracecontext import format_traceparent
from tailguard.observe.tracing import STAGE_SPANS, Tracer, TracingUnavailable, otlp_exporter
from tailguard.scheduler import Job
from tailguard.schema.wire import Reply, Request, Status
from tailguard.serve.app import App, ServeConfig, State
from tailguard.testing import FakeClock

CLASSES = ("critical", "normal", "bulk")
RUNGS = ("primary", "fast", "last_good", "default")
TRACE, PARENT = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
SAMPLED = format_traceparent(TRACE, PARENT, 1)
NOT_SAMPLED = format_traceparent(TRACE, PARENT, 0)
TIMINGS = [1_000, 200, 3_000, 5_000, 400, 10_000]  # queue, 4 engine stages, server total


def tracer(clock: FakeClock, *, ratio: float = 0.0,
           capacity: int = 16) -> tuple[Tracer, InMemorySpanExporter]:
    exp = InMemorySpanExporter()
    t = Tracer(exp, service="toy", class_names=CLASSES, rung_names=RUNGS, clock=clock, ratio=ratio,
               capacity=capacity, version="v1")
    return t, exp


def job(req: Request, arrival_ns: int, level: int = 1) -> Job[tuple[Request, Any]]:
    return Job((req, None), level, arrival_ns + 50_000, arrival_ns)


def ok(req: Request, rungs: tuple[int, ...] = (0,), flags: int = 0) -> Reply:
    return Reply(req.id, 0, [0.5] * len(rungs), len(rungs), "toy/v1", list(rungs), [flags] * len(rungs),
                 list(TIMINGS))


def finished(t: Tracer, exp: InMemorySpanExporter) -> list[ReadableSpan]:
    assert t.flush()
    return list(exp.get_finished_spans())


def server_span(spans: list[ReadableSpan]) -> ReadableSpan:
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    return server


def test_a_sampled_parent_gets_a_server_span_that_is_its_child(clock: FakeClock) -> None:
    t, exp = tracer(clock)
    req = Request(7, "a", traceparent=SAMPLED, client_id="c1")
    arrival = clock.now_ns()
    t.answered(job(req, arrival), ok(req), False, 4)
    s = server_span(finished(t, exp))
    assert s.parent is not None and s.parent.span_id == PARENT and s.parent.is_remote
    assert s.context.trace_id == TRACE
    wall = clock.wall_ns() - clock.now_ns() + arrival
    assert (s.start_time, s.end_time) == (wall, wall + TIMINGS[-1])
    assert s.name == "predict" and s.status.status_code is StatusCode.UNSET
    assert dict(s.attributes or {}) == {
        "tailguard.request_id": 7, "tailguard.client_id": "c1", "tailguard.status": "ok",
        "tailguard.status_code": 0, "tailguard.priority": "normal", "tailguard.rung": "primary",
        "tailguard.model_version": "toy/v1", "tailguard.rows": 1, "tailguard.batch_size": 4,
        "tailguard.late": False, "tailguard.flags": 0,
    }
    assert s.resource.attributes["service.name"] == "toy"


def test_stage_spans_are_children_laid_end_to_end(clock: FakeClock) -> None:
    t, exp = tracer(clock)
    req = Request(1, "a", traceparent=SAMPLED)
    arrival = clock.now_ns()
    t.answered(job(req, arrival), ok(req), False, 1)
    spans = finished(t, exp)
    server = server_span(spans)
    stages = sorted((s for s in spans if s.kind is SpanKind.INTERNAL), key=lambda s: s.start_time or 0)
    assert [s.name for s in stages] == list(STAGE_SPANS)
    assert all(s.parent is not None and s.parent.span_id == server.context.span_id for s in stages)
    assert all(s.context.trace_id == TRACE for s in stages)
    t0 = server.start_time or 0
    for s, d in zip(stages, TIMINGS, strict=False):
        assert (s.start_time, s.end_time) == (t0, t0 + d)
        t0 += d


def test_a_parent_that_is_not_sampled_is_not_traced(clock: FakeClock) -> None:
    t, exp = tracer(clock, ratio=1.0)
    req = Request(1, "a", traceparent=NOT_SAMPLED)
    t.answered(job(req, clock.now_ns()), ok(req), False, 1)
    assert t.pending == 0 and finished(t, exp) == []


def test_without_a_parent_ratio_zero_traces_nothing(clock: FakeClock) -> None:
    t, exp = tracer(clock, ratio=0.0)
    req = Request(1, "a")
    for _ in range(50):
        t.answered(job(req, clock.now_ns()), ok(req), False, 1)
    assert t.statistics()["sampled"] == 0 and finished(t, exp) == []


def test_without_a_parent_a_sampled_root_keeps_the_trace_id_it_was_sampled_by(clock: FakeClock) -> None:
    t, exp = tracer(clock, ratio=0.5)
    draws = iter([(1 << 63) + 5, 12345])  # the low bits of two new trace ids: over, under the bound
    t._bits = lambda n: next(draws)
    req = Request(1, "a")
    t.answered(job(req, clock.now_ns()), ok(req), False, 1)
    t.answered(job(req, clock.now_ns()), ok(req), False, 1)
    s = server_span(finished(t, exp))
    assert s.parent is None and s.context.trace_id & ((1 << 64) - 1) == 12345 and s.context.trace_id >> 64
    assert t.statistics()["sampled"] == 1


def test_an_invalid_header_is_ignored_and_counted(clock: FakeClock) -> None:
    t, exp = tracer(clock, ratio=0.0)
    req = Request(1, "a", traceparent="00-not-a-header-01")
    t.answered(job(req, clock.now_ns()), ok(req), False, 1)
    assert finished(t, exp) == [] and t.statistics()["bad_traceparent"] == 1


def test_an_invalid_header_is_sampled_as_if_absent(clock: FakeClock) -> None:
    t, exp = tracer(clock, ratio=1.0)
    req = Request(1, "a", traceparent=SAMPLED.upper())
    t.answered(job(req, clock.now_ns()), ok(req), False, 1)
    s = server_span(finished(t, exp))
    assert s.parent is None and s.context.trace_id != TRACE
    assert t.statistics()["bad_traceparent"] == 1


def test_a_full_queue_drops_and_counts(clock: FakeClock) -> None:
    t, exp = tracer(clock, capacity=2)
    req = Request(1, "a", traceparent=SAMPLED)
    for _ in range(5):
        t.answered(job(req, clock.now_ns()), ok(req), False, 1)
    assert t.statistics() == {"sampled": 2, "dropped": 3, "traced": 0, "bad_traceparent": 0, "pending": 2}
    assert len([s for s in finished(t, exp) if s.kind is SpanKind.SERVER]) == 2
    assert t.statistics()["traced"] == 2


def test_drain_makes_progress_on_a_zero_budget(clock: FakeClock) -> None:
    t, _ = tracer(clock)
    req = Request(1, "a", traceparent=SAMPLED)
    for _ in range(3):
        t.answered(job(req, clock.now_ns()), ok(req), False, 1)
    assert t.drain(0) == 1 and t.pending == 2


def test_a_door_rejection_is_an_instant_error_span(clock: FakeClock) -> None:
    t, exp = tracer(clock)
    req = Request(3, "a", traceparent=SAMPLED)
    t.refused(req, None, Reply(3, int(Status.QUEUE_FULL), error="queue_full (bulk)"))
    spans = finished(t, exp)
    s = server_span(spans)
    assert len(spans) == 1 and s.start_time == s.end_time == clock.wall_ns()
    assert s.status.status_code is StatusCode.ERROR and s.status.description == "queue_full (bulk)"
    attrs = s.attributes or {}
    assert attrs["tailguard.status"] == "queue_full" and "tailguard.priority" not in attrs


def test_a_request_refused_from_the_queue_shows_its_wait(clock: FakeClock) -> None:
    t, exp = tracer(clock)
    req = Request(3, "a", traceparent=SAMPLED)
    j = job(req, clock.now_ns(), level=2)
    clock.advance(ns=30_000)
    t.refused(req, j, Reply(3, int(Status.EXPIRED), error="expired (bulk)"))
    spans = finished(t, exp)
    server = server_span(spans)
    (queue,) = [s for s in spans if s.kind is SpanKind.INTERNAL]
    assert queue.name == "queue" and (queue.end_time or 0) - (queue.start_time or 0) == 30_000
    assert (server.attributes or {})["tailguard.priority"] == "bulk"


def test_a_bad_request_is_not_a_server_error(clock: FakeClock) -> None:
    t, exp = tracer(clock)
    req = Request(3, "a", traceparent=SAMPLED)
    t.refused(req, None, Reply(3, int(Status.INVALID_REQUEST), error="bad", field="keys"))
    assert server_span(finished(t, exp)).status.status_code is StatusCode.UNSET


def test_a_batch_request_names_its_lowest_rung(clock: FakeClock) -> None:
    t, exp = tracer(clock)
    req = Request(3, ["a", "b", "c"], traceparent=SAMPLED, batch=True)
    t.answered(job(req, clock.now_ns()), ok(req, rungs=(0, 3, 1), flags=4), True, 3)
    s = server_span(finished(t, exp))
    attrs = s.attributes or {}
    assert s.name == "predict_batch"
    assert (attrs["tailguard.rung"], attrs["tailguard.rows"], attrs["tailguard.late"]) == ("default", 3, True)


def test_close_exports_what_is_queued(clock: FakeClock) -> None:
    t, exp = tracer(clock)
    req = Request(1, "a", traceparent=SAMPLED)
    t.answered(job(req, clock.now_ns()), ok(req), False, 1)
    t.close()
    assert len(exp.get_finished_spans()) == 1 + len(STAGE_SPANS)


def test_without_the_sdk_the_error_names_the_pip_command(monkeypatch: pytest.MonkeyPatch,
                                                          clock: FakeClock) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(TracingUnavailable, match=r"pip install 'tailguard\[otel\]'") as info:
        tracer(clock)
    assert info.value.code == "otel_missing"


@pytest.mark.parametrize(("given", "url"), [
    ("http://collector:4318", "http://collector:4318/v1/traces"),
    ("http://collector:4318/", "http://collector:4318/v1/traces"),
    ("https://otel.example/custom/path", "https://otel.example/custom/path"),
])
def test_the_otlp_endpoint_gets_the_traces_path_when_it_has_none(given: str, url: str) -> None:
    assert otlp_exporter(given)._endpoint == url


# -- wired into a dispatcher ---------------------------------------------------------------------
class Sink:
    closed = False

    def __init__(self) -> None:
        self.replies: list[Reply] = []

    def deliver(self, reply: Reply) -> None:
        self.replies.append(reply)

    def flush(self) -> None:
        return None


def test_without_a_tracer_the_dispatcher_carries_no_tap(toy_dir: Path) -> None:
    loop = asyncio.new_event_loop()
    app = App(load_service(toy_dir, freeze_gc=False), ServeConfig(calibrate=False), loop)
    try:
        assert not {"_finish", "_refuse", "_deliver_rows"} & set(vars(app.dispatcher))
        exp = InMemorySpanExporter()
        app.trace(exp)
        assert {"_finish", "_refuse", "_deliver_rows"} <= set(vars(app.dispatcher))
    finally:
        app.stop()
        loop.close()


def test_an_app_traces_the_requests_its_dispatcher_answers(toy_dir: Path) -> None:
    loop = asyncio.new_event_loop()
    app = App(load_service(toy_dir, freeze_gc=False), ServeConfig(calibrate=False), loop)
    exp = InMemorySpanExporter()
    app.trace(exp)
    app.state = State.READY
    sink = Sink()
    ctx = {"price": 104.5, "size": 3.0}
    for i in range(8):  # one read of eight requests: scored as one micro-batch
        app.dispatcher.submit(Request(i, f"k{i}", ctx, traceparent=SAMPLED), app.clock.now_ns(), sink)
    bad = Request(99, "a", ctx, priority="nope", traceparent=SAMPLED)
    app.dispatcher.submit(bad, app.clock.now_ns(), sink)
    app.dispatcher.flush()
    app.stop()  # closes the tracer: everything queued is exported
    loop.close()
    assert sorted(r.id for r in sink.replies) == [*range(8), 99]
    servers = [s for s in exp.get_finished_spans() if s.kind is SpanKind.SERVER]
    by_id = {(s.attributes or {})["tailguard.request_id"]: s for s in servers}
    assert sorted(by_id) == [*range(8), 99]
    assert all(s.parent is not None and s.parent.span_id == PARENT for s in servers)
    attrs = by_id[3].attributes or {}
    assert attrs["tailguard.batch_size"] == 8 and attrs["tailguard.priority"] == app.dispatcher.class_names[1]
    assert (by_id[99].attributes or {})["tailguard.status"] == "unknown_priority"
    assert app.statistics()["tracing"]["traced"] == 9
