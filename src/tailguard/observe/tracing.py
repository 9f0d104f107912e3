"""OpenTelemetry traces of sampled requests, built off the reply path from the reply's timings.

On the reply path (dispatcher taps ``answered``/``refused``) an unsampled request costs one
branch: a request whose ``traceparent`` says *not sampled* is skipped after a length test
and a set lookup (``tracecontext.quick_flag``); one without a header draws the low 64 bits
of a new trace id and is skipped unless they fall under the ratio bound
(``tracecontext.RatioSampler``'s rule).  A sampled request appends one tuple — header,
trace id bits, request, arrival, class, reply — to a bounded deque; when the deque is full
the request is counted in ``dropped``, never waited for.

On the side path ``drain`` validates the header (an invalid one is counted in
``bad_traceparent`` and the request is sampled as if it had none) and turns each tuple into
spans through the OpenTelemetry SDK, with explicit times: a SERVER span per request — the
child of the incoming ``traceparent`` — from its arrival to the reply, and one INTERNAL
child per stage (queue, ingest, features, inference, delivery) laid end to end from the
reply's ``timings_ns``.  Monotonic times map to wall-clock times through one offset taken
at construction.  A ``BatchSpanProcessor`` exports the spans from its own thread (OTLP over
HTTP with ``otlp_exporter``, or any ``SpanExporter``: tests pass the SDK's
``InMemorySpanExporter``).  The SDK is the ``otel`` extra, imported on first use.

Owner: the event loop thread (taps and ``drain``); the span processor's export thread.
"""

from __future__ import annotations

import os
import random
import time
from collections import deque
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from tailguard.clock import Clock
from tailguard.errors import TailguardError
from tailguard.observe.tracecontext import UNSAMPLED_LAST_DIGITS, RatioSampler, parse_traceparent
from tailguard.scheduler import Job
from tailguard.schema.wire import TIMING_NAMES, Reply, Request, Status

__all__ = ["STAGE_SPANS", "Tracer", "TracingUnavailable", "otlp_exporter"]

#: Child spans of a request's server span, in order (``TIMING_NAMES`` less the total).
STAGE_SPANS = TIMING_NAMES[:-1]
_PIP = "pip install 'tailguard[otel]'"


class TracingUnavailable(TailguardError):
    """Tracing was asked for but the OpenTelemetry SDK (the ``otel`` extra) is missing."""

    code = "otel_missing"


def _sdk() -> Any:
    """The OpenTelemetry modules tracing needs, imported on first use."""
    try:
        from opentelemetry import context, trace
        from opentelemetry.sdk import resources
        from opentelemetry.sdk import trace as sdk_trace
        from opentelemetry.sdk.trace import export, sampling
    except ImportError as exc:
        raise TracingUnavailable(f"tracing needs the OpenTelemetry SDK ({exc}); install it: {_PIP}") from exc
    return SimpleNamespace(context=context, trace=trace, resources=resources, sdk_trace=sdk_trace,
                           export=export, sampling=sampling)


def otlp_exporter(endpoint: str, timeout_s: float = 5.0) -> Any:
    """An OTLP/HTTP (protobuf) span exporter to ``endpoint``: a collector's base URL
    (``http://collector:4318``, to which ``/v1/traces`` is added) or the full traces URL."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise TracingUnavailable(f"--otlp-endpoint needs the OTLP/HTTP exporter ({exc}); install it: "
                                 f"{_PIP}") from exc
    url = endpoint
    if urlsplit(endpoint).path in ("", "/"):
        url = endpoint.rstrip("/") + "/v1/traces"
    return OTLPSpanExporter(endpoint=url, timeout=timeout_s)


class Tracer:
    """Sampled request traces for one service (install ``answered``/``refused`` as dispatcher
    taps and attach the tracer to the service's side path; see the module docstring).

    ``exporter``: an OpenTelemetry ``SpanExporter``.  ``ratio``: head-sampling ratio for
    requests without a valid parent.  ``capacity``: sampled requests queued between drains.
    ``class_names`` / ``rung_names``: names by level index / rung index, for attributes.
    ``export_delay_s``: how long the batch processor gathers spans before an export.
    """

    def __init__(self, exporter: Any, *, service: str, class_names: Sequence[str],
                 rung_names: Sequence[str], clock: Clock, ratio: float = 0.01, capacity: int = 4096,
                 export_delay_s: float = 1.0, version: str = "") -> None:
        otel = _sdk()
        self._otel = otel
        self.sampler = RatioSampler(ratio)
        self.capacity = capacity
        self.service = service
        self.class_names = tuple(class_names)
        self.rung_names = tuple(rung_names)
        self._now = clock.now_ns
        #: Monotonic ns + offset = wall-clock ns since the epoch (taken once: spans of one
        #: process stay consistent with each other even if the wall clock is stepped).
        self.offset_ns = clock.wall_ns() - clock.now_ns()
        self._queue: deque[tuple[Any, ...]] = deque()
        self._bound = self.sampler.bound
        self._bits = random.getrandbits
        self._ids = _preset_ids()
        resource = otel.resources.Resource({
            "service.name": service, "service.version": version, "process.pid": os.getpid(),
            "telemetry.sdk.name": "opentelemetry", "telemetry.sdk.language": "python",
        })
        self.provider = otel.sdk_trace.TracerProvider(
            sampler=otel.sampling.ALWAYS_ON, resource=resource, id_generator=self._ids,
            shutdown_on_exit=False,
        )
        self.provider.add_span_processor(otel.export.BatchSpanProcessor(
            exporter, max_queue_size=max(capacity, 2048) * (len(STAGE_SPANS) + 1),
            schedule_delay_millis=export_delay_s * 1e3,
        ))
        self._tracer = self.provider.get_tracer("tailguard")
        self._server_kind = otel.trace.SpanKind.SERVER
        self.sampled = 0
        self.dropped = 0
        self.traced = 0
        self.bad_traceparent = 0

    # -- reply path (dispatcher taps): decide, enqueue ------------------------------------------
    def _admit(self, tp: str) -> int:
        """Whether a reply is traced: -1 when not (an unsampled parent, the ratio's coin, a
        full queue: counted), else the low 64 bits of a new trace id (0: the parent's)."""
        if tp:
            if len(tp) == 55 and tp[54] in UNSAMPLED_LAST_DIGITS:
                return -1  # the caller's trace is not recorded: neither is ours
            low = 0
        else:
            low = self._bits(64)
            if low >= self._bound:
                return -1
        if len(self._queue) >= self.capacity:
            self.dropped += 1
            return -1
        self.sampled += 1
        return low

    def answered(self, job: Job[tuple[Request, Any]], reply: Reply, late: bool, batch_rows: int) -> None:
        """A decision reply: queue it when its request is sampled (O(1); see the module doc)."""
        req = job.payload[0]
        tp = req.traceparent
        low = self._admit(tp)
        if low >= 0:
            self._queue.append((tp, low, req, job.arrival_ns, job.level_index, reply, late, batch_rows, 0))

    def refused(self, req: Request, job: Job[tuple[Request, Any]] | None, reply: Reply) -> None:
        """A rejection or failure: queue it when sampled (a door rejection's span is instant)."""
        tp = req.traceparent
        low = self._admit(tp)
        if low < 0:
            return
        q = self._queue
        now = self._now()
        if job is None:
            q.append((tp, low, req, now, -1, reply, False, 0, now))
        else:
            q.append((tp, low, req, job.arrival_ns, job.level_index, reply, False, 0, now))

    # -- side path ----------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Sampled requests queued and not yet turned into spans."""
        return len(self._queue)

    def drain(self, budget_ns: int | None = None) -> int:
        """Turn queued requests into spans for about ``budget_ns`` of real time (None: all;
        at least one per call, so a tight budget still makes progress).  Returns how many."""
        q = self._queue
        if not q:
            return 0
        clock = time.perf_counter_ns
        end = None if budget_ns is None else clock() + budget_ns
        n = 0
        while q and (n == 0 or end is None or clock() < end):
            self._spans(q.popleft())
            n += 1
        return n

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Drain, then wait until the span processor has exported everything (True if it did)."""
        self.drain(None)
        return bool(self.provider.force_flush(round(timeout_s * 1e3)))

    def close(self) -> None:
        """Drain, export what is queued and shut the provider (and its exporter) down."""
        self.drain(None)
        self.provider.shutdown()

    def statistics(self) -> dict[str, int]:
        """``sampled`` (queued), ``dropped`` (queue full), ``traced`` (server spans made),
        ``bad_traceparent`` (invalid headers ignored) and ``pending``."""
        return {"sampled": self.sampled, "dropped": self.dropped, "traced": self.traced,
                "bad_traceparent": self.bad_traceparent, "pending": len(self._queue)}

    def _parent(self, tp: str, low: int) -> Any:
        """The parent context of a sampled request, or None when it turns out unsampled."""
        otel = self._otel
        if tp:
            parent = parse_traceparent(tp)
            if parent is not None:
                if not parent.sampled:  # a header of a later version, read on the side path
                    return None
                trace = otel.trace
                remote = trace.SpanContext(parent.trace_id, parent.span_id, True,
                                           trace.TraceFlags(parent.flags))
                return trace.set_span_in_context(trace.NonRecordingSpan(remote))
            # An invalid header is ignored: the request is sampled as if it had none.
            self.bad_traceparent += 1
            low = self._bits(64)
            if low >= self._bound:
                return None
        self._ids.preset = self.sampler.new_trace_id(low)
        return otel.context.Context()

    def _spans(self, item: tuple[Any, ...]) -> None:
        tp, low, req, arrival, level, reply, late, batch_rows, end = item
        ctx = self._parent(tp, low)
        if ctx is None:
            return
        offset = self.offset_ns
        timings = reply.timings_ns
        status = reply.status
        attrs: dict[str, Any] = {
            "tailguard.request_id": req.id,
            "tailguard.status": _code(status),
            "tailguard.status_code": status,
        }
        if req.client_id:
            attrs["tailguard.client_id"] = req.client_id
        if level >= 0:
            attrs["tailguard.priority"] = self.class_names[level]
        if status == 0:
            if reply.rungs:  # a batch request's rows may differ: the lowest rung that answered
                worst, names = max(reply.rungs), self.rung_names
                attrs["tailguard.rung"] = names[worst] if worst < len(names) else str(worst)
            attrs["tailguard.model_version"] = reply.model_version
            attrs["tailguard.rows"] = reply.rows
            attrs["tailguard.batch_size"] = batch_rows
            attrs["tailguard.late"] = late
            flags = 0
            for f in reply.flags:
                flags |= f
            attrs["tailguard.flags"] = flags
            end = arrival + timings[-1]
        elif reply.error:
            attrs["tailguard.error"] = reply.error
        name = "predict_batch" if req.batch else "predict"
        span = self._tracer.start_span(name, context=ctx, kind=self._server_kind, attributes=attrs,
                                       start_time=arrival + offset)
        if status >= 20:  # the server did not answer (refused or failed); 1x: the caller's error
            span.set_status(self._otel.trace.Status(self._otel.trace.StatusCode.ERROR, reply.error))
        child = self._otel.trace.set_span_in_context(span)
        start_span = self._tracer.start_span
        if timings:
            t = arrival + offset
            for stage, d in zip(STAGE_SPANS, timings, strict=False):
                start_span(stage, context=child, start_time=t).end(end_time=t + d)
                t += d
        elif level >= 0:  # admitted, then refused from the queue: it waited until ``end``
            start_span("queue", context=child, start_time=arrival + offset).end(end_time=end + offset)
        span.end(end_time=end + offset)
        self.traced += 1


def _code(status: int) -> str:
    try:
        return Status(status).code
    except ValueError:
        return str(status)


def _preset_ids() -> Any:
    """An SDK id generator whose next trace id can be set: a sampled root request's trace id
    was drawn on the reply path (the sampling decision is a function of it)."""
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class PresetIds(RandomIdGenerator):
        preset = 0

        def generate_trace_id(self) -> int:
            tid, self.preset = self.preset, 0
            return tid or int(super().generate_trace_id())

    return PresetIds()
