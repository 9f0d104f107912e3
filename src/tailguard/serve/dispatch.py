"""The dispatcher: wire requests -> admission -> queues -> micro-batches -> engine -> replies.

Transports (binary TCP/Unix, HTTP) hand every decoded request to ``Dispatcher.submit``
together with a ``ReplySink``; the dispatcher answers through the sink exactly once per
request — a decision, a rejection with a retry-after, or an error — and never raises into
the transport.  Admission happens at the door (in ``submit``); queued work runs one batch per
event-loop callback, so frames that arrive while a batch runs are read and admitted before
the next batch is chosen (a critical request never waits behind more than the batch in
progress).  Replies are buffered per sink and flushed once per batch.

Observers (tracing, structured logs) see replies through ``tap_replies``: it wraps this
instance's reply methods when a tap is installed, so a dispatcher without taps runs no
observer code at all — not even a test per request.

Owner: the event loop thread (the engine and the scheduler are single-threaded).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from tailguard.decision import BatchDecision, Decision
from tailguard.errors import TailguardError, UnknownPriority, ValidationError
from tailguard.observe.latency import LatencyRecorder
from tailguard.scheduler import Admit, Batch, Job, Reason, Scheduler, Verdict
from tailguard.schema.wire import TIMING_NAMES, Reply, Request, Status
from tailguard.service import Service

__all__ = ["AnsweredTap", "Dispatcher", "RefusedTap", "ReplySink", "status_of_reason"]

_REASON_STATUS = {
    Reason.QUEUE_FULL: Status.QUEUE_FULL,
    Reason.RATE_LIMITED: Status.RATE_LIMITED,
    Reason.PREDICTED_LATE: Status.PREDICTED_LATE,
    Reason.EXPIRED: Status.EXPIRED,
    Reason.SHED_OVERLOAD: Status.SHED_OVERLOAD,
    Reason.DRAINING: Status.DRAINING,
}
_ERROR_STATUS = {
    "invalid_request": Status.INVALID_REQUEST,
    "unknown_priority": Status.UNKNOWN_PRIORITY,
    "feature_error": Status.FEATURE_ERROR,
    "budget_exhausted": Status.BUDGET_EXHAUSTED,
}


def status_of_reason(reason: Reason) -> Status:
    """The wire status for a scheduler reason."""
    return _REASON_STATUS[reason]


class ReplySink(Protocol):
    """Where a request's reply goes (a connection, an HTTP exchange).  Loop thread only."""

    closed: bool

    def deliver(self, reply: Reply) -> None:
        """Take one reply (buffer it; ``flush`` sends)."""
        ...

    def flush(self) -> None:
        """Send what was delivered so far."""
        ...


Payload = tuple[Request, ReplySink]
WireJob = Job[Payload]
#: Sees each decision reply: (job, reply, late, rows scored in the same engine call).
AnsweredTap = Callable[[WireJob, Reply, bool, int], None]
#: Sees each non-OK reply: (request, its job — None when refused at the door —, reply).
RefusedTap = Callable[[Request, WireJob | None, Reply], None]


class Dispatcher:
    """Admission, queueing and batched execution for one service on one event loop."""

    def __init__(
        self, service: Service, scheduler: Scheduler[Payload], loop: asyncio.AbstractEventLoop,
        min_batch_call: int = 6,
    ) -> None:
        self.service = service
        self.engine = service.engine
        #: What decisions go through: the engine, or a rollout routing between the stable and
        #: the candidate engine (``serve.rollouts``), which takes the engine's arguments.
        self.front: Any = service.engine
        self.scheduler = scheduler
        self.loop = loop
        self._now = service.engine.clock.now_ns
        spec = service.spec
        self.service_name = spec.name
        self.primary_version = service.engine.rungs[0].label.split("/", 1)[-1]
        self.class_names = scheduler.names  # level order: a job's level_index indexes it
        self.context_fields = tuple(service.engine.assembler.context_fields)
        self.draining = False
        #: Per class (level order): queue, engine stages and server total of every decision
        #: answered, in ``TIMING_NAMES`` order (reply path: one list store; aggregated on the
        #: side path or at scrape time).
        self.latency = [LatencyRecorder(1 << 14, TIMING_NAMES) for _ in self.class_names]
        #: Micro-batches smaller than this run as single calls (see ``_run_jobs``).
        self.min_batch_call = min_batch_call
        self._soon: asyncio.Handle | None = None
        self._stepping = False
        self._inline = False
        #: Total time spent in batches (ns): transports subtract it from their own time.
        self.batch_ns = 0
        self._timer: asyncio.TimerHandle | None = None
        self._dirty: list[ReplySink] = []
        self._idle_hook: Callable[[], None] | None = None
        # Counters (plain ints, read by statistics()).
        self.submitted = 0
        self.answered = 0
        self.late = 0
        self.errors: dict[str, int] = {}
        self.abandoned = 0
        self.in_flight = 0
        #: Called when a step leaves nothing queued (the app runs side-path slices from it).
        self.on_idle: Callable[[], None] | None = None

    # -- the door ----------------------------------------------------------------------------
    def submit(self, req: Request, arrival_ns: int, sink: ReplySink) -> None:
        """Admit ``req`` (arrived at ``arrival_ns`` on the engine clock); answer via ``sink``.

        Contract: the caller ends a burst of submits (one transport read) with ``flush()``,
        which runs the queued work; nothing is scheduled per request."""
        self.submitted += 1
        if self.draining:
            self._reject(req, sink, Status.DRAINING, "the server is draining; send to another endpoint")
            return
        if req.model and req.model != self.service_name:
            self._reject(req, sink, Status.UNKNOWN_MODEL, f"unknown model {req.model!r}", "model")
            return
        if req.version and req.version != self.primary_version:
            self._reject(
                req, sink, Status.UNKNOWN_MODEL,
                f"model version {req.version!r} is not served (active: {self.primary_version!r})", "version",
            )
            return
        try:
            ci = self.scheduler.class_index(req.priority or None)
        except (KeyError, ValueError, UnknownPriority):
            self._reject(req, sink, Status.UNKNOWN_PRIORITY,
                         f"unknown priority class {req.priority!r}; declared: {list(self.class_names)}",
                         "priority")
            return
        budget_us = req.budget_us
        if type(budget_us) is not int or budget_us < 0:
            self._reject(req, sink, Status.INVALID_REQUEST, "budget_us must be a non-negative integer",
                         "budget_us")
            return
        rows = 1
        if req.batch:
            keys = req.keys
            n = len(keys) if isinstance(keys, list) else (
                max((len(v) for v in keys.values() if isinstance(v, list)), default=1)
                if isinstance(keys, dict) else -1
            )
            if n <= 0:
                self._reject(req, sink, Status.INVALID_REQUEST,
                             "a batch request needs a non-empty list of keys", "keys")
                return
            rows = n
        deadline = self.scheduler.deadline_for(ci, arrival_ns, budget_us * 1000 if budget_us else None)
        job: WireJob = Job(
            payload=(req, sink),
            level_index=ci,
            deadline_ns=deadline,
            arrival_ns=arrival_ns,
            client_id=req.client_id,
            rows=rows,
            batchable=not req.batch,
        )
        verdict = self.scheduler.submit(job, self._now())
        kind = verdict.kind
        if kind is Admit.QUEUED:
            # Runs at the transport's flush() that ends this read (the contract below).
            self.in_flight += 1
        elif kind is Admit.ANSWER_NOW:
            self.in_flight += 1
            self._run_jobs([job], verdict.rung, ci)
        else:
            self._reject_verdict(job, verdict)

    def note_ingress(self, n: int, elapsed_ns: int) -> None:
        """A transport read ``n`` requests in ``elapsed_ns`` (decode + admission): load at the
        door that admission accounts for."""
        self.scheduler.note_ingress(n, elapsed_ns)

    # -- execution ---------------------------------------------------------------------------
    def _wake(self) -> None:
        if self._soon is None:
            self._soon = self.loop.call_soon(self._step)

    def _step(self) -> None:
        """Run one batch (or hand back what the scheduler dropped), then yield to the loop."""
        self._stepping = True
        t0, b0 = self._now(), self.batch_ns
        try:
            self._step_once()
        finally:
            self._stepping = False
        if not self._inline:
            # A loop callback: what it spent outside the batch (replies written, expiries) is
            # load the scheduler must see.  Inline steps are part of their read's ingress.
            self.scheduler.note_ingress(0, self._now() - t0 - (self.batch_ns - b0))

    def _step_once(self) -> None:
        if self._soon is not None:
            self._soon.cancel()  # this step does its work (it may be the inline one)
            self._soon = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sched = self.scheduler
        if sched.has_dropped:
            for job, verdict in sched.take_dropped():
                self._settle(job, verdict)
        batch = sched.next_batch(self._now())
        if sched.has_dropped:
            for job, verdict in sched.take_dropped():
                self._settle(job, verdict)
        if batch is not None:
            self._run_batch(batch)
        self._flush()
        if not sched.total_queued:
            if self.on_idle is not None:
                self.on_idle()
            return
        if batch is not None:
            self._wake()
        else:
            at = sched.wake_at_ns()
            if at is not None:
                delay = max(at - self._now(), 0) / 1e9
                self._timer = self.loop.call_later(delay, self._step)
            else:
                self._wake()

    def _settle(self, job: WireJob, verdict: Verdict) -> None:
        """A job the scheduler handed back outside a batch: answer it cheaply or reject it."""
        if verdict.kind is Admit.ANSWER_NOW:
            self._run_jobs([job], verdict.rung, job.level_index)
        else:
            self.in_flight -= 1
            self._reject_verdict(job, verdict)

    def _run_batch(self, batch: Batch[Payload]) -> None:
        t0 = self._now()
        jobs = [j for j in batch.jobs if not j.payload[1].closed]
        dropped = len(batch.jobs) - len(jobs)
        rows = batch.rows
        if dropped:
            # Their clients left: no reply to form, so no work (counted, never silent).
            self.abandoned += dropped
            self.in_flight -= dropped
            rows = sum(j.rows for j in jobs)
        # Exactly one observation per batch handed out (the scheduler tracks the batch in
        # flight by it), even when every client left.
        if jobs:
            self._run_jobs(jobs, batch.rung, batch.class_index)
            elapsed = self._now() - t0
            self.batch_ns += elapsed
            self.scheduler.observe(batch.rung, rows, elapsed)
        else:
            self.scheduler.observe(batch.rung, batch.rows, None)

    def _run_jobs(self, jobs: list[WireJob], rung: int, ci: int) -> None:
        """Score ``jobs`` (one class, one start rung) and deliver their replies."""
        pname = self.class_names[ci]
        engine = self.front
        start = self._now()
        if len(jobs) == 1:
            job = jobs[0]
            req = job.payload[0]
            try:
                if req.batch:
                    bd = engine.predict_batch(req.keys, req.context, priority=pname,
                                              deadline_ns=job.deadline_ns, start_rung=rung)
                    self._deliver_batch(job, bd, start)
                else:
                    d = engine.predict(req.keys, req.context, priority=pname,
                                       deadline_ns=job.deadline_ns, start_rung=rung)
                    self._deliver_one(job, d, start)
            except Exception as exc:  # errors get their status; a bug costs one request, not the server
                self._fail(job, exc)
            return
        if len(jobs) < self.min_batch_call or engine is not self.engine:
            # (During a rollout each request is routed by its own key: no mixed micro-batch.)
            # The batch call has a fixed cost (vectorised features, a batch-shaped model run)
            # that only pays off from a few rows on: below that, one fast call per request.
            for j in jobs:
                self._run_jobs([j], rung, ci)
            return
        # A micro-batch of single-entity requests: one engine call, split per request.
        try:
            keys = [j.payload[0].keys for j in jobs]
            ctx = self._stack_context(jobs)
            deadline = min(j.deadline_ns for j in jobs)
            bd = engine.predict_batch(keys, ctx, priority=pname, deadline_ns=deadline, start_rung=rung)
        except (ValidationError, TypeError, ValueError, KeyError):
            # One bad request must not fail its neighbours: score them one by one.
            for j in jobs:
                self._run_jobs([j], rung, ci)
            return
        except Exception as exc:
            for j in jobs:
                self._fail(j, exc)
            return
        self._deliver_rows(jobs, bd, start)

    def _stack_context(self, jobs: list[WireJob]) -> dict[str, Any] | None:
        first = jobs[0].payload[0].context
        if not first:
            for j in jobs:
                if j.payload[0].context:
                    raise ValidationError("mixed context", field="context")
            return None
        names = first.keys()
        contexts = []
        for j in jobs:
            c = j.payload[0].context
            if c is None or c.keys() != names:
                raise ValidationError("context fields differ", field="context")
            contexts.append(c)
        out: dict[str, Any] = {}
        for name in names:
            out[name] = np.array([c[name] for c in contexts], dtype=np.float64)
        return out

    # -- replies -----------------------------------------------------------------------------
    def _finish(self, job: WireJob, reply: Reply, late: bool) -> None:
        self.in_flight -= 1
        self.answered += 1
        self.latency[job.level_index].record(reply.timings_ns)
        if late:
            self.late += 1
        sink = job.payload[1]
        if sink.closed:
            self.abandoned += 1
            return
        sink.deliver(reply)
        self._mark(sink)

    def _deliver_one(self, job: WireJob, d: Decision, start: int) -> None:
        t = d.timings_ns
        end = self._now()
        reply = Reply(
            job.payload[0].id, 0, d.outputs.tolist(), 1, d.model_version, [d.rung_index], [d.flags],
            [start - job.arrival_ns, t[0], t[1], t[2], t[3], end - job.arrival_ns],
        )
        self._finish(job, reply, end > job.deadline_ns)

    def _deliver_batch(self, job: WireJob, bd: BatchDecision, start: int) -> None:
        t = bd.timings_ns
        end = self._now()
        reply = Reply(
            job.payload[0].id, 0, bd.outputs.ravel().tolist(), len(bd), bd.model_version,
            bd.rungs.tolist(), bd.flags.tolist(),
            [start - job.arrival_ns, t[0], t[1], t[2], t[3], end - job.arrival_ns],
        )
        self._finish(job, reply, end > job.deadline_ns)

    def _deliver_rows(self, jobs: list[WireJob], bd: BatchDecision, start: int) -> None:
        t = bd.timings_ns
        outs = bd.outputs.tolist()
        rungs = bd.rungs.tolist()
        flags = bd.flags.tolist()
        version = bd.model_version
        end = self._now()
        for i, job in enumerate(jobs):
            reply = Reply(
                job.payload[0].id, 0, outs[i], 1, version, [rungs[i]], [flags[i]],
                [start - job.arrival_ns, t[0], t[1], t[2], t[3], end - job.arrival_ns],
            )
            self._finish(job, reply, end > job.deadline_ns)

    def _fail(self, job: WireJob, exc: BaseException) -> None:
        self.in_flight -= 1
        if isinstance(exc, TailguardError):
            status = _ERROR_STATUS.get(exc.code, Status.MODEL_ERROR)
        else:
            status = Status.INTERNAL
        field = getattr(exc, "field", "")
        self.count_error(status)
        req = job.payload[0]
        self._refuse(req, job.payload[1], Reply(req.id, int(status), error=str(exc) or type(exc).__name__,
                                                field=field), job)

    def _reject(self, req: Request, sink: ReplySink, status: Status, message: str, field: str = "",
                retry_after_ns: int = 0, job: WireJob | None = None) -> None:
        self.count_error(status)
        self._refuse(req, sink, Reply(req.id, int(status), retry_after_us=retry_after_ns // 1000,
                                      error=message, field=field), job)

    def _refuse(self, req: Request, sink: ReplySink, reply: Reply, job: WireJob | None) -> None:
        """Deliver a non-OK ``reply`` (``job``: the admitted job it answers; None at the door)."""
        if not sink.closed:
            sink.deliver(reply)
            self._mark(sink)

    def _reject_verdict(self, job: WireJob, verdict: Verdict) -> None:
        reason = verdict.reason
        assert reason is not None
        status = status_of_reason(reason)
        self._reject(job.payload[0], job.payload[1], status,
                     f"{reason.value} ({self.class_names[job.level_index]})", "",
                     verdict.retry_after_ns, job)

    def count_error(self, status: Status) -> None:
        """Count a non-OK reply by its code."""
        code = status.code
        self.errors[code] = self.errors.get(code, 0) + 1

    def tap_replies(self, answered: AnsweredTap | None = None, refused: RefusedTap | None = None) -> None:
        """Show replies to observers from now on: ``answered`` sees every decision reply,
        ``refused`` every rejection and failure, each right after the reply is handed to its
        sink (before the flush that sends it), on the loop thread.  Taps run on the reply
        path: they may only enqueue.  Installing wraps this instance's reply methods (later
        taps wrap earlier ones), so a dispatcher without taps pays nothing for them."""
        if answered is not None:
            finish, rows = self._finish, self._deliver_rows
            batch = [0]  # rows of the micro-batch being delivered (0: a single engine call)

            def finish_tapped(job: WireJob, reply: Reply, late: bool) -> None:
                finish(job, reply, late)
                answered(job, reply, late, batch[0] or reply.rows)

            def rows_tapped(jobs: list[WireJob], bd: BatchDecision, start: int) -> None:
                batch[0] = len(bd)
                try:
                    rows(jobs, bd, start)
                finally:
                    batch[0] = 0

            # Instance attributes shadow the methods: the wrappers exist only once tapped.
            self._finish = finish_tapped  # type: ignore[method-assign]
            self._deliver_rows = rows_tapped  # type: ignore[method-assign]
        if refused is not None:
            refuse = self._refuse

            def refuse_tapped(req: Request, sink: ReplySink, reply: Reply, job: WireJob | None) -> None:
                refuse(req, sink, reply, job)
                refused(req, job, reply)

            self._refuse = refuse_tapped  # type: ignore[method-assign]

    def _mark(self, sink: ReplySink) -> None:
        self._dirty.append(sink)

    def _flush(self) -> None:
        dirty = self._dirty
        if dirty:
            self._dirty = []
            for sink in dirty:
                sink.flush()

    def flush(self) -> None:
        """End of a burst of submits (a transport read): run the first batch now, inline —
        the frames of this read are all admitted, so the batch is chosen knowing them, and
        the request skips an event-loop round trip — then send every buffered reply.  Later
        batches run from loop callbacks, so other connections' frames are read in between."""
        sched = self.scheduler
        if (sched.total_queued or sched.has_dropped) and not self._stepping:
            self._inline = True
            try:
                self._step()
            finally:
                self._inline = False
        else:
            self._flush()

    # -- lifecycle ---------------------------------------------------------------------------
    def start_draining(self) -> None:
        """New requests get DRAINING from now on; queued ones still run."""
        self.draining = True

    @property
    def idle(self) -> bool:
        """Nothing queued or running."""
        return self.in_flight == 0

    def drain_latency(self, budget_ns: int | None = None) -> int:
        """Side path: fold queued reply timings into the per-class histograms."""
        done = 0
        for rec in self.latency:
            done += rec.drain(budget_ns)
        return done

    def statistics(self) -> dict[str, Any]:
        """Counters of the door and the replies, plus the scheduler's own."""
        return {
            "submitted": self.submitted,
            "answered": self.answered,
            "late": self.late,
            "errors": dict(self.errors),
            "abandoned": self.abandoned,
            "in_flight": self.in_flight,
            "scheduler": self.scheduler.statistics(),
        }
