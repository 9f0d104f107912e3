"""Structured JSON logs: one JSON object per line, formatted and written off the reply path.

Every line has ``ts`` (RFC 3339, UTC, microseconds), ``level``, ``event``, ``service`` and
``pid`` (the worker), then ``request_id`` / ``client_id`` / ``trace_id`` when the event is
about a request (``trace_id`` when it carried a valid ``traceparent``), then the event's own
fields (docs/observability.md lists them)::

    {"ts":"2025-05-04T09:12:03.123456Z","level":"warning","event":"request.rejected",
     "service":"trading","pid":4242,"request_id":17,"status":"queue_full","priority":"bulk",...}

Events: lifecycle (``server.start``/``ready``/``drain``/``stop``, from the app), per
request ``request.invalid`` (info), ``request.rejected`` (warning: refusals and sheds),
``request.failed`` (error), ``reply.late`` and ``ladder.fallback`` (warning), records of
the stdlib ``logging`` module (library warnings, exporter errors) as ``log``, and the log's
own accounting: ``log.suppressed`` (per reason, when a rate-limit window closes) and
``log.dropped`` (the queue was full).

Reply path (dispatcher taps ``answered``/``refused``): a branch or two, then, for an event
that passes its reason's rate limit (``per_window`` events per ``window_s`` per reason, so an
overload cannot flood the log), one tuple appended to a bounded deque.  ``drain`` (the side
path) formats the lines with msgspec and writes them in one ``write`` to the file (opened
``O_APPEND``: workers may share it) or to stderr.  Hot events never touch ``logging.Logger``.

Owner: the event loop thread (taps, ``event``, ``drain``); ``handler()``'s ``emit`` may run
on any thread (a deque append is atomic).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import msgspec

from tailguard.clock import Clock
from tailguard.decision import Flag
from tailguard.observe.loglimit import LogLimiter
from tailguard.observe.tracecontext import parse_traceparent
from tailguard.scheduler import Job
from tailguard.schema.wire import Reply, Request, Status

__all__ = ["LEVELS", "JsonLog", "rfc3339"]

#: Level names and their stdlib numbers (``--log-level``).
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_NAMES = {v: k for k, v in LEVELS.items()}
_FALLBACK = int(Flag.FALLBACK)
_INFO, _WARNING, _ERROR = logging.INFO, logging.WARNING, logging.ERROR
_REQ, _EVENT, _RECORD = 0, 1, 2  # queue entry kinds


def rfc3339(wall_ns: int) -> str:
    """Wall-clock ns since the epoch as ``2025-05-04T09:12:03.123456Z`` (UTC, µs)."""
    sec, ns = divmod(wall_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{ns // 1000:06d}Z"


class JsonLog:
    """The structured log of one serving process (see the module docstring).

    ``path``: a file (appended to) or ``"-"`` for stderr.  ``level``: the lowest level
    written (``LEVELS``).  ``capacity``: events queued between drains.  ``class_names`` /
    ``rung_names``: names by level index / rung index.  ``clock``: the engine's clock (event
    times and rate-limit windows).
    """

    def __init__(self, path: str | Path, *, service: str, clock: Clock, class_names: tuple[str, ...] = (),
                 rung_names: tuple[str, ...] = (), level: str = "info", capacity: int = 8192,
                 per_window: int = 20, window_s: float = 1.0) -> None:
        if level not in LEVELS:
            raise ValueError(f"unknown log level {level!r}; one of {list(LEVELS)}")
        self.path = str(path)
        self.level = LEVELS[level]
        self.service = service
        self.pid = os.getpid()
        self.class_names = class_names
        self.rung_names = rung_names
        self.capacity = capacity
        self.limiter = LogLimiter(per_window, window_s)
        self._now = clock.now_ns
        self.offset_ns = clock.wall_ns() - clock.now_ns()
        #: Lowest reply status logged: 1x are info, 2x warning, 3x error.
        self.status_floor = 0 if self.level <= _INFO else 20 if self.level <= _WARNING else 30
        self._queue: deque[tuple[Any, ...]] = deque()
        self._encode = msgspec.json.Encoder().encode
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        self._fd = 2 if self.path == "-" else os.open(self.path, flags, 0o644)
        self._handler: logging.Handler | None = None
        self._captured: list[logging.Logger] = []
        self._took_warnings = False
        self.dropped = 0
        self._unlogged_drops = 0
        self.written = 0

    @property
    def wants_answers(self) -> bool:
        """Whether ``answered`` can log anything at this level (late replies, fallbacks are
        warnings): the app installs the tap only then."""
        return self.level <= _WARNING

    # -- reply path (dispatcher taps) ---------------------------------------------------------
    def answered(self, job: Job[tuple[Request, Any]], reply: Reply, late: bool, batch_rows: int) -> None:
        """A decision reply: log it when it was late or answered by a fallback rung."""
        if late:
            now = self._now()
            if self.limiter.allow("late", now):
                self._put((_REQ, now, "reply.late", job.payload[0], reply, job))
        for f in reply.flags:
            if f & _FALLBACK:
                now = self._now()
                if self.limiter.allow("fallback", now):
                    self._put((_REQ, now, "ladder.fallback", job.payload[0], reply, job))
                return

    def refused(self, req: Request, job: Job[tuple[Request, Any]] | None, reply: Reply) -> None:
        """A rejection or failure: log it (rate-limited per status)."""
        status = reply.status
        if status < self.status_floor:
            return
        now = self._now()
        if self.limiter.allow(status, now):
            self._put((_REQ, now, None, req, reply, job))

    def _put(self, entry: tuple[Any, ...]) -> None:
        if len(self._queue) >= self.capacity:
            self.dropped += 1
            self._unlogged_drops += 1
            return
        self._queue.append(entry)

    # -- events of the process ------------------------------------------------------------------
    def event(self, level: str, event: str, **fields: Any) -> None:
        """Queue one event (lifecycle and the like; not for per-request use).  ``fields``
        must encode as JSON."""
        lv = LEVELS[level]
        if lv >= self.level:
            self._put((_EVENT, self._now(), event, lv, fields))

    def handler(self) -> logging.Handler:
        """A stdlib ``logging.Handler`` feeding this log (records become ``log`` events)."""
        if self._handler is None:
            self._handler = _Handler(self)
            self._handler.setLevel(self.level)
        return self._handler

    def capture_stdlib(self, *loggers: str) -> None:
        """Feed this log from stdlib ``logging``: the named loggers (default: the root, so
        library warnings and exporter errors arrive) and ``warnings.warn`` (captured as the
        ``py.warnings`` logger).  ``close`` undoes it."""
        handler = self.handler()
        for name in loggers or ("",):
            logger = logging.getLogger(name or None)
            logger.addHandler(handler)
            self._captured.append(logger)
        if not loggers:
            logging.captureWarnings(True)
            self._took_warnings = True

    # -- side path ------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Events queued and not yet written."""
        return len(self._queue)

    def drain(self, budget_ns: int | None = None) -> int:
        """Format and write queued events for about ``budget_ns`` of real time (None: all; at
        least one per call), in one write.  Returns how many were written."""
        now = self._now()
        window_s = self.limiter.window_ns / 1e9
        head = [self._line(now, _WARNING, "log.suppressed", None,
                           {"reason": _reason(r), "suppressed": n, "window_s": window_s})
                for r, n in self.limiter.closed(now)]
        if self._unlogged_drops:
            head.append(self._line(now, _WARNING, "log.dropped", None, {"dropped": self._unlogged_drops}))
            self._unlogged_drops = 0
        q = self._queue
        clock = time.perf_counter_ns
        end = None if budget_ns is None else clock() + budget_ns
        lines = head
        n = 0
        while q and (n == 0 or end is None or clock() < end):
            lines.append(self._format(q.popleft()))
            n += 1
        if lines:
            self._write(b"".join(lines))
            self.written += len(lines)
        return n + len(head)

    def close(self) -> None:
        """Write everything queued, detach the stdlib handler and close the file."""
        if self._handler is not None:
            for logger in self._captured:
                logger.removeHandler(self._handler)
        self._captured = []
        if self._took_warnings:
            logging.captureWarnings(False)
            self._took_warnings = False
        self.drain(None)
        if self._handler is not None:
            self._handler.close()
        if self._fd > 2:
            os.close(self._fd)
            self._fd = -1

    def statistics(self) -> dict[str, int]:
        """``written`` lines, ``dropped`` (queue full), ``suppressed`` (rate limit), ``pending``."""
        return {"written": self.written, "dropped": self.dropped, "suppressed": self.limiter.suppressed,
                "pending": len(self._queue)}

    def _format(self, entry: tuple[Any, ...]) -> bytes:
        kind, now = entry[0], entry[1]
        if kind == _EVENT:
            return self._line(now, entry[3], entry[2], None, entry[4])
        if kind == _RECORD:
            return self._line(now, entry[2], "log", None, entry[3], wall=True)
        _, now, event, req, reply, job = entry
        fields: dict[str, Any] = {}
        status = reply.status
        if event is None:
            event, level = (("request.invalid", _INFO) if status < 20 else ("request.rejected", _WARNING)
                            if status < 30 else ("request.failed", _ERROR))
            fields["status"] = _reason(status)
        else:
            level = _WARNING
        if job is not None and 0 <= job.level_index < len(self.class_names):
            fields["priority"] = self.class_names[job.level_index]
        if status:
            fields["error"] = reply.error
            if reply.field:
                fields["field"] = reply.field
            if reply.retry_after_us:
                fields["retry_after_us"] = reply.retry_after_us
        else:
            names = self.rung_names
            fields["rung"] = [names[r] if r < len(names) else str(r) for r in sorted(set(reply.rungs))]
            fields["model_version"] = reply.model_version
            fields["server_us"] = reply.timings_ns[-1] / 1e3 if reply.timings_ns else None
            if event == "reply.late" and job is not None:
                fields["late_by_us"] = (job.arrival_ns + reply.timings_ns[-1] - job.deadline_ns) / 1e3
        return self._line(now, level, event, req, fields)

    def _line(self, now: int, level: int, event: str, req: Request | None, fields: dict[str, Any],
              wall: bool = False) -> bytes:
        out: dict[str, Any] = {
            "ts": rfc3339(now if wall else now + self.offset_ns), "level": _NAMES.get(level, "error"),
            "event": event, "service": self.service, "pid": self.pid,
        }
        if req is not None:
            out["request_id"] = req.id
            if req.client_id:
                out["client_id"] = req.client_id
            tp = parse_traceparent(req.traceparent) if req.traceparent else None
            if tp is not None:
                out["trace_id"] = tp.trace_id_hex
        out.update(fields)
        return self._encode(out) + b"\n"

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]


def _reason(key: Any) -> str:
    if isinstance(key, int):
        try:
            return Status(key).code
        except ValueError:
            return str(key)
    return str(key)


class _Handler(logging.Handler):
    """Stdlib records -> ``JsonLog`` events (the message is formatted in ``emit``, on the
    caller's thread: record arguments may change after the call returns)."""

    def __init__(self, log: JsonLog) -> None:
        super().__init__()
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name, "message": record.getMessage()}
            if record.exc_info:
                fields["exception"] = logging.Formatter().formatException(record.exc_info)
            level = max(min(record.levelno, _ERROR), logging.DEBUG)
            level = max(k for k in _NAMES if k <= level)
            self.log._put((_RECORD, round(record.created * 1e9), level, fields))
        except Exception:
            self.handleError(record)
