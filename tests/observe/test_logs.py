"""Structured JSON logs: line format, request events, levels, rate limits, drops, stdlib records."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from tailguard import load_service
from tailguard.decision import Flag
from tailguard.observe.loglimit import LogLimiter
from tailguard.observe.logs import JsonLog, rfc3339
from tailguard.observe.tracecontext import format_traceparent
from tailguard.scheduler import Job
from tailguard.schema.wire import Reply, Request, Status
from tailguard.serve.app import App, ServeConfig, State
from tailguard.testing import FakeClock

CLASSES = ("critical", "normal", "bulk")
RUNGS = ("primary", "fast", "last_good", "default")
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
TRACE = 0x0AF7651916CD43DD8448EB211C80319C


def jlog(path: Path, clock: FakeClock, **kw: Any) -> JsonLog:
    return JsonLog(path, service="toy", clock=clock, class_names=CLASSES, rung_names=RUNGS, **kw)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def job(req: Request, arrival_ns: int, level: int = 2) -> Job[tuple[Request, Any]]:
    return Job((req, None), level, arrival_ns + 1_000_000, arrival_ns)


def rejected(rid: int, status: Status = Status.QUEUE_FULL) -> Reply:
    return Reply(rid, int(status), retry_after_us=500, error=f"{status.code} (bulk)")


def test_rfc3339_is_utc_with_microseconds() -> None:
    assert rfc3339(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456Z"
    assert rfc3339(0) == "1970-01-01T00:00:00.000000Z"


def test_a_rejection_is_one_json_line_with_the_request_id(tmp_path: Path, clock: FakeClock) -> None:
    log = jlog(tmp_path / "log", clock)
    req = Request(17, "a", client_id="c9", traceparent=format_traceparent(TRACE, 5))
    log.refused(req, job(req, clock.now_ns()), rejected(17))
    log.close()
    (line,) = lines(tmp_path / "log")
    assert TS.fullmatch(line.pop("ts"))
    assert line == {
        "level": "warning", "event": "request.rejected", "service": "toy", "pid": log.pid,
        "request_id": 17, "client_id": "c9", "trace_id": f"{TRACE:032x}", "status": "queue_full",
        "priority": "bulk", "error": "queue_full (bulk)", "retry_after_us": 500,
    }


def test_the_timestamp_is_the_events_wall_time(tmp_path: Path, clock: FakeClock) -> None:
    log = jlog(tmp_path / "log", clock)
    req = Request(1, "a")
    log.refused(req, None, rejected(1))
    at = clock.wall_ns()
    clock.advance(5.0)  # written later: the line still says when it happened
    log.close()
    assert lines(tmp_path / "log")[0]["ts"] == rfc3339(at)


@pytest.mark.parametrize(("status", "event", "level"), [
    (Status.INVALID_REQUEST, "request.invalid", "info"),
    (Status.SHED_OVERLOAD, "request.rejected", "warning"),
    (Status.MODEL_ERROR, "request.failed", "error"),
])
def test_refusals_are_logged_by_kind(tmp_path: Path, clock: FakeClock, status: Status, event: str,
                                     level: str) -> None:
    log = jlog(tmp_path / "log", clock)
    log.refused(Request(1, "a"), None, Reply(1, int(status), error="why", field="keys"))
    log.close()
    (line,) = lines(tmp_path / "log")
    assert (line["event"], line["level"], line["status"], line["error"]) == (event, level, status.code, "why")
    assert "trace_id" not in line and "priority" not in line


def test_the_level_filters_events_before_they_are_queued(tmp_path: Path, clock: FakeClock) -> None:
    log = jlog(tmp_path / "log", clock, level="error")
    for i, status in enumerate((Status.INVALID_REQUEST, Status.QUEUE_FULL, Status.INTERNAL)):
        log.refused(Request(i, "a"), None, Reply(i, int(status), error="x"))
    log.event("info", "server.ready")
    assert log.pending == 1 and not log.wants_answers
    log.close()
    assert [line["event"] for line in lines(tmp_path / "log")] == ["request.failed"]


def test_a_late_reply_and_a_fallback_are_warnings(tmp_path: Path, clock: FakeClock) -> None:
    log = jlog(tmp_path / "log", clock)
    req = Request(4, "a")
    j = job(req, clock.now_ns())
    timings = [0, 0, 0, 0, 0, 1_500_000]  # answered 0.5 ms after the 1 ms deadline
    log.answered(j, Reply(4, 0, [0.1], 1, "", [2], [int(Flag.FALLBACK)], timings), True, 1)
    log.answered(j, Reply(5, 0, [0.1], 1, "toy/v1", [0], [0], timings), False, 1)  # neither
    log.close()
    late, fallback = lines(tmp_path / "log")
    assert (late["event"], late["late_by_us"], late["priority"]) == ("reply.late", 500.0, "bulk")
    assert (fallback["event"], fallback["rung"], fallback["level"]) == (
        "ladder.fallback", ["last_good"], "warning")


def test_an_overload_is_cut_to_a_few_lines_and_one_count(tmp_path: Path, clock: FakeClock) -> None:
    log = jlog(tmp_path / "log", clock, per_window=3, window_s=1.0)
    for i in range(10):
        log.refused(Request(i, "a"), None, rejected(i))
    log.refused(Request(50, "a"), None, rejected(50, Status.RATE_LIMITED))  # another reason: its own limit
    log.drain(None)
    clock.advance(1.0)
    log.close()
    out = lines(tmp_path / "log")
    assert [line["request_id"] for line in out if line["event"] == "request.rejected"] == [0, 1, 2, 50]
    (summary,) = [line for line in out if line["event"] == "log.suppressed"]
    assert (summary["reason"], summary["suppressed"], summary["window_s"]) == ("queue_full", 7, 1.0)
    assert log.statistics()["suppressed"] == 7


def test_a_full_queue_drops_and_logs_the_count(tmp_path: Path, clock: FakeClock) -> None:
    log = jlog(tmp_path / "log", clock, capacity=2)
    for i in range(5):
        log.refused(Request(i, "a"), None, rejected(i, Status.INTERNAL))
    log.close()
    out = lines(tmp_path / "log")
    assert [line["event"] for line in out] == ["log.dropped", "request.failed", "request.failed"]
    assert out[0]["dropped"] == 3 and log.statistics()["dropped"] == 3


def test_stdlib_records_become_log_events(tmp_path: Path, clock: FakeClock) -> None:
    log = jlog(tmp_path / "log", clock)
    logger = logging.getLogger("tailguard.test_logs")
    log.capture_stdlib("tailguard.test_logs")
    logger.warning("exporter said %s", "no")
    logger.debug("below the level")
    log.close()
    logger.warning("after close: not ours")
    (line,) = lines(tmp_path / "log")
    assert (line["event"], line["level"], line["logger"], line["message"]) == (
        "log", "warning", "tailguard.test_logs", "exporter said no")


def test_lifecycle_events_carry_their_fields(tmp_path: Path, clock: FakeClock) -> None:
    log = jlog(tmp_path / "log", clock)
    log.event("info", "server.ready", listeners=["tcp", "http"])
    log.close()
    (line,) = lines(tmp_path / "log")
    assert (line["event"], line["listeners"], line["service"]) == ("server.ready", ["tcp", "http"], "toy")


def test_dash_writes_to_stderr(capfd: pytest.CaptureFixture[str], clock: FakeClock) -> None:
    log = JsonLog("-", service="toy", clock=clock)
    log.event("warning", "server.drain", in_flight=3)
    log.close()
    line = json.loads(capfd.readouterr().err)
    assert (line["event"], line["in_flight"]) == ("server.drain", 3)


def test_an_unknown_level_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="log level"):
        jlog(tmp_path / "log", clock, level="loud")


def test_the_limiter_reports_each_closed_window_once() -> None:
    lim = LogLimiter(per_window=1, window_s=1.0)
    assert lim.allow("a", 0) and not lim.allow("a", 10) and not lim.allow("a", 20)
    assert lim.closed(500_000_000) == []  # the window is still open
    assert lim.closed(1_000_000_000) == [("a", 2)]
    assert lim.closed(2_000_000_000) == []
    assert lim.allow("a", 3_000_000_000) and not lim.allow("a", 3_000_000_001)
    assert lim.allow("a", 4_000_000_000)  # a new window: the last one's count is queued
    assert lim.closed(4_000_000_001) == [("a", 1)]


def test_an_app_logs_its_lifecycle_and_refusals(toy_dir: Path, tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    path = tmp_path / "serve.log"
    app = App(load_service(toy_dir, freeze_gc=False), ServeConfig(calibrate=False, log_json=str(path)), loop)
    app.state = State.READY

    class Sink:
        closed = False

        def deliver(self, reply: Reply) -> None:
            return None

        def flush(self) -> None:
            return None

    app.dispatcher.submit(Request(3, "a", priority="nope"), app.clock.now_ns(), Sink())
    app.stop()
    loop.close()
    out = lines(path)
    assert [line["event"] for line in out] == ["server.start", "request.invalid", "server.stop"]
    assert out[1]["status"] == "unknown_priority" and out[1]["request_id"] == 3
    assert out[2]["errors"] == {"unknown_priority": 1}
