"""One serving process: the loaded service, its dispatcher and its listeners, with a lifecycle.

States (``State``): STARTING (loading, not listening) -> READY (serving) -> DRAINING (no new
work: listeners closed, new requests answered DRAINING, queued and running requests finish)
-> STOPPED.  ``live`` is true from READY until STOPPED; ``ready`` only in READY.

The side path (model probes, histogram aggregation) runs on a timer in the loop, bounded per
tick, so skipped models recover without a request paying for the probe.

Owner: the event loop thread; ``begin_drain`` is what the SIGTERM handler calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from tailguard import __version__
from tailguard.clock import Clock
from tailguard.scheduler import CostModel, Scheduler
from tailguard.schema.frames import DEFAULT_MAX_FRAME
from tailguard.schema.wire import Welcome
from tailguard.serve.config import scheduler_config
from tailguard.serve.dispatch import Dispatcher, Payload
from tailguard.service import Service

if TYPE_CHECKING:
    from tailguard.audit.log import AuditLog
    from tailguard.observe.dashboard import DashboardSampler
    from tailguard.observe.drift import DriftMonitor
    from tailguard.observe.logs import JsonLog
    from tailguard.observe.sideproc import RemoteDrift, SideProcess
    from tailguard.observe.tracing import Tracer
    from tailguard.serve.natsreply import NatsReplier
    from tailguard.serve.rollouts import ServedRollouts

__all__ = ["App", "ServeConfig", "State", "adopt_transport"]


class State(enum.Enum):
    """A serving process's lifecycle state (the value is what health endpoints report)."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ServeConfig:
    """Transport settings of ``tailguard serve`` (scheduling lives in the service spec)."""

    tcp: str | None = None
    unix: str | None = None
    http: str | None = None
    workers: int = 1
    max_frame: int = DEFAULT_MAX_FRAME
    handshake_timeout_s: float = 10.0
    drain_timeout_s: float = 30.0
    busy_poll: bool = False
    side_path_interval_s: float = 0.01
    #: Side-path work per tick: short slices, since a request arriving meanwhile waits.
    side_path_budget_s: float = 50e-6
    #: Idle-time slices: when the dispatcher has nothing queued and at least this many
    #: decisions wait for the side path (``Service.side_backlog``), one slice of
    #: ``side_slice_budget_s`` runs from the loop (0: only the timer).  Gathering a few dozen
    #: spreads each task's fixed cost per drain thin; running in the idle gap after replies
    #: keeps the work out of the way of requests, except one that arrives during a slice.
    side_slice_backlog: int = 32
    side_slice_budget_s: float = 100e-6
    reuseport: bool = False
    backlog: int = 4096
    #: ``HOST:PORT`` of one ``/metrics`` for all workers (the supervisor merges them; with one
    #: worker it is one more HTTP listener of that worker).
    metrics: str | None = None
    #: Set by the supervisor: each worker serves HTTP on ``<dir>/<pid>.sock`` for it to scrape.
    metrics_socket_dir: str | None = None
    #: Run the cyclic garbage collector from the side-path timer instead of at whatever
    #: allocation happens to cross its threshold (which lands a pause on a request).
    gc_on_side_path: bool = True
    #: Time every batch size once at start (the scheduler's cost model starts from measurements).
    calibrate: bool = True
    #: Log every decision to ``audit_dir/<worker pid>`` with this key file (both or neither).
    audit_dir: str | None = None
    audit_key_file: str | None = None
    audit_fsync_s: float = 0.05
    #: Sign the audit checkpoints with this Ed25519 key file (``tailguard audit keygen --ed25519``).
    audit_signing_key_file: str | None = None
    #: Per-subject PII keys (needed when the spec marks an entity ``pii_mode = "hash"``).
    audit_subject_keys: str | None = None
    #: Audit retention, applied by each worker after a segment rotation (None: keep all).
    audit_keep_days: float | None = None
    audit_keep_segments: int | None = None
    #: Copy each worker's audit log to this NATS server's JetStream (``tailguard.audit.offbox``).
    audit_nats: str | None = None
    audit_nats_stream: str = "TAILGUARD_AUDIT"
    #: Run the audit log, the drift monitor and the latency folds in a side process per worker
    #: (``tailguard.observe.sideproc``): their work leaves the serving core.  None (the default):
    #: yes when the audit log or drift is on, the ring's writer compiles here and there is a
    #: core per worker to spare (``side_process_default``); True/False force it.
    side_process: bool | None = None
    #: How decisions reach it (``SideProcess`` transports: ``auto``, ``ring``, ``pipe``).
    side_transport: str = "auto"
    #: With the ring: the side child under ``SCHED_IDLE`` while it keeps up, so a worker woken
    #: by a request takes its CPU back at once (``SideProcess(idle=...)``); False: nice +5 only.
    side_idle: bool = True
    #: Micro-batches smaller than this run as one engine call per request (a batch call has
    #: a fixed cost: about 50 µs against 10 µs per single call for the trading example).
    min_batch_call: int = 6
    #: The live dashboard (``/dashboard``): one point every ``dashboard_interval_s`` (0: off),
    #: the last ``dashboard_points`` kept (300 at 1 s: five minutes).
    dashboard_interval_s: float = 1.0
    dashboard_points: int = 300
    #: The engine's per-stage latency histograms (``/metrics``, ``/dashboard``); False removes
    #: the recorder hook (the dispatcher's per-class timings stay).
    record_latency: bool = True
    #: The shared online store's URL (``redis://host:port/db``), overriding the spec's
    #: ``[online] url`` (docs/features-online.md); None: the spec's.
    online_url: str | None = None
    #: Cap every online-store read at the tightest priority class's budget: one engine thread
    #: serves every class, so a slow read for a bulk request would hold up the critical ones
    #: behind it for as long as the bulk budget allows (False: each read only by its own budget).
    online_read_cap: bool = True
    #: Traces (the ``otel`` extra; docs/observability.md): spans of sampled requests go by
    #: OTLP/HTTP to this URL (None: tracing off — nothing on the reply path).  A request whose
    #: ``traceparent`` is sampled is traced; one without a valid parent with this probability.
    otlp_endpoint: str | None = None
    trace_sample: float = 0.01
    #: Structured JSON logs to this file ("-": stderr; None: off), from ``log_level`` up.
    log_json: str | None = None
    log_level: str = "info"
    #: Follow the service's rollout goal in this Redis (``tailguard rollout ...`` writes it;
    #: docs/rollout.md): every worker deploys, routes, promotes and rolls back as the goal says.
    rollout_redis: str | None = None
    #: Also serve the binary protocol over NATS request-reply (``serve.natsreply``): each worker
    #: subscribes to ``nats_subject`` (None: ``tailguard.<service>.predict``) in the queue group
    #: ``nats_queue`` (None: the service name) on this server.
    nats: str | None = None
    nats_subject: str | None = None
    nats_queue: str | None = None


def adopt_transport(transport: asyncio.BaseTransport) -> asyncio.Transport:
    """A new connection's transport, with Nagle off on TCP (a reply must not wait for the
    previous one's ACK).  uvloop's transports implement asyncio.Transport without subclassing
    it, hence the cast rather than a check."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return cast(asyncio.Transport, transport)


#: The side-path timer skips its work when an idle slice ran this recently (ns).
_SLICE_RECENT_NS = 50_000_000



def side_process_default(workers: int) -> bool:
    """Whether a side process runs the side path when nothing says: only where it pays — the
    ring's compiled writer loads here (``tailguard.observe.ring``) and this process may use more
    cores than there are workers (each worker's side process gets one to itself)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    if cores <= max(workers, 1):
        return False
    from tailguard.observe.ring import compile_writer

    return compile_writer()[0] is not None

class SidePathGC:
    """The cyclic garbage collector, moved off the reply path.

    Request garbage is freed by reference counting; the cyclic collector only matters for
    cycles.  Left automatic, a young collection runs inside whichever allocation crosses its
    threshold — inside a request — and an older one can take milliseconds.  This disables
    automatic collection and runs it from the side-path timer: a young collection once
    enough objects accumulated, a middle one every second, a full one every minute.  Memory
    stays bounded (cycles still die within a minute); pauses land between requests.
    """

    def __init__(self, young: int = 10_000, middle_every: int = 100, full_every: int = 6000) -> None:
        self.young = young
        self.middle_every = middle_every
        self.full_every = full_every
        self.ticks = 0
        self.collections = [0, 0, 0]
        gc.disable()

    def tick(self) -> None:
        """One side-path tick (every ``side_path_interval_s``)."""
        self.ticks += 1
        if self.ticks % self.full_every == 0:
            gen = 2
        elif self.ticks % self.middle_every == 0:
            gen = 1
        elif gc.get_count()[0] > self.young:
            gen = 0
        else:
            return
        gc.collect(gen)
        self.collections[gen] += 1

    def close(self) -> None:
        """Give the collector back to the interpreter."""
        gc.enable()


class App:
    """A service served on one event loop."""

    def __init__(self, service: Service, config: ServeConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.service = service
        self.config = config
        self.loop = loop
        self.clock: Clock = service.engine.clock
        engine = service.engine
        sconf = scheduler_config(service.spec, engine)
        costs = CostModel(sconf.n_rungs, engine.expected_ns)
        if config.calibrate:
            # Every batch size the scheduler may form, timed before traffic: first calls at a
            # new shape are slow, and a cost model that met them in traffic would believe it.
            sizes = sorted({*range(1, min(sconf.max_batch_size, 16) + 1),
                            *(1 << k for k in range(4, sconf.max_batch_size.bit_length() + 1)
                              if 1 << k <= sconf.max_batch_size), sconf.max_batch_size})
            engine.calibrate(sizes, 8, costs.observe, singles_below=config.min_batch_call)
        self.scheduler: Scheduler[Payload] = Scheduler(sconf, costs)
        self.dispatcher = Dispatcher(service, self.scheduler, loop, config.min_batch_call)
        self.state = State.STARTING
        self.connections: set[Any] = set()
        self._servers: list[asyncio.Server] = []
        self.nats: NatsReplier | None = None
        self._stopped = asyncio.Event()
        self._side_timer: asyncio.TimerHandle | None = None
        self.metrics_registry: Any = None  # the /metrics collector, made by serve.metrics
        from tailguard.serve.metrics import Scrapes

        self.scrapes = Scrapes(self)  # /metrics, answered in steps between requests
        self._gc: SidePathGC | None = SidePathGC() if config.gc_on_side_path else None
        self._slice_soon = False
        self._last_slice_ns = 0
        self.side_slices = 0
        if config.side_slice_backlog > 0:
            self.dispatcher.on_idle = self._maybe_slice
        remote = engine.remote
        if remote is not None and config.online_read_cap:
            from tailguard.features.remote import READ_RESERVE_NS

            remote.read_cap_ns = max(min(c.budget_ns for c in sconf.classes) - READ_RESERVE_NS, 0)
        if not config.record_latency and service.latency is not None:
            engine.set_hooks([h for h in engine.hooks if h is not service.latency])
            service.latency = None
        self.audit: AuditLog | None = None
        self.drift: DriftMonitor | RemoteDrift | None = None
        self.side_process: SideProcess | None = None
        audited = bool(config.audit_dir and config.audit_key_file)
        wanted = config.side_process
        if wanted is None:
            wanted = side_process_default(config.workers)
        if wanted and (audited or service.spec.drift.enabled):
            self._start_side_process(service, config)
        elif config.audit_dir and config.audit_key_file:
            from tailguard.audit.admin import open_log

            self.audit = open_log(service, Path(config.audit_dir) / str(os.getpid()), config.audit_key_file,
                                  signing_key_file=config.audit_signing_key_file,
                                  subject_keys_dir=config.audit_subject_keys,
                                  keep_days=config.audit_keep_days, keep_segments=config.audit_keep_segments,
                                  fsync_interval_s=config.audit_fsync_s)
            if config.audit_nats:
                from tailguard.audit.offbox import AuditShipper

                # Attached first, so closed after the log (side tasks close newest first): the
                # closing checkpoint is shipped too.
                shipper = AuditShipper(self.audit.directory, config.audit_nats, service=service.spec.name,
                                       stream=config.audit_nats_stream)
                service.attach(shipper.start())
            service.attach(self.audit)
        if service.spec.drift.enabled and self.side_process is None:  # the reference must exist (load error)
            from tailguard.observe.drift import DriftMonitor

            self.drift = DriftMonitor.from_spec(service)
            service.attach(self.drift)
        self.rollouts: ServedRollouts | None = None
        if config.rollout_redis:
            from tailguard.serve.rollouts import ServedRollouts

            self.rollouts = ServedRollouts(service, self.dispatcher, config.rollout_redis)
            service.attach(self.rollouts)
        self.dashboard: DashboardSampler | None = None
        if config.dashboard_interval_s > 0:
            from tailguard.observe.dashboard import DashboardSampler

            d = self.dispatcher
            self.dashboard = DashboardSampler(
                service, interval_s=config.dashboard_interval_s, capacity=config.dashboard_points,
                classes=list(zip(d.class_names, d.latency, strict=True)),
                scheduler_stats=self.scheduler.statistics, state=lambda: self.state.value,
            )
            service.attach(self.dashboard)
        self.welcome = Welcome(
            1,
            f"tailguard/{__version__}",
            service.spec.name,
            config.max_frame,
            os.getpid(),
            list(engine.assembler.entities),
            list(engine.assembler.context_fields),
            list(engine.output_names),
            list(engine.rung_names),
            [c.name for c in sconf.classes],
            self.dispatcher.primary_version,
        )
        self.log: JsonLog | None = None
        self.tracer: Tracer | None = None
        if config.log_json:  # before the tracer: closed after it, so its last words are logged
            self.log_json(config.log_json)
        if config.otlp_endpoint:
            from tailguard.observe.tracing import otlp_exporter

            self.trace(otlp_exporter(config.otlp_endpoint))
        self._note("server.start", version=__version__, model_version=self.welcome.model_version,
                   priorities=self.welcome.priorities, rungs=self.welcome.rungs,
                   tracing=self.tracer is not None)

    # -- observability wiring --------------------------------------------------------------
    def _start_side_process(self, service: Service, config: ServeConfig) -> None:
        """The audit log (``audit_dir/<pid>``) and the drift monitor in one side process."""
        from tailguard.observe.sideproc import AuditConfig, RemoteDrift, SideProcess

        audit = None
        if config.audit_dir and config.audit_key_file:
            audit = AuditConfig(str(Path(config.audit_dir) / str(os.getpid())), config.audit_key_file,
                                signing_key_file=config.audit_signing_key_file,
                                subject_keys_dir=config.audit_subject_keys, keep_days=config.audit_keep_days,
                                keep_segments=config.audit_keep_segments, nats=config.audit_nats,
                                nats_stream=config.audit_nats_stream,
                                options={"fsync_interval_s": config.audit_fsync_s})
        self.side_process = SideProcess.attach(service, audit=audit, drift=service.spec.drift.enabled,
                                               transport=config.side_transport, idle=config.side_idle)
        self.drift = next((t for t in service.side_tasks if isinstance(t, RemoteDrift)), None)

    def trace(self, exporter: Any) -> Tracer:
        """Trace sampled requests (``config.trace_sample``) to ``exporter``, an OpenTelemetry
        ``SpanExporter``, from now on (before ``start``; tests pass an in-memory one)."""
        from tailguard.observe.tracing import Tracer

        tracer = Tracer(exporter, service=self.service.spec.name, class_names=self.dispatcher.class_names,
                        rung_names=self.service.engine.rung_names, clock=self.clock,
                        ratio=self.config.trace_sample, version=self.dispatcher.primary_version)
        self.dispatcher.tap_replies(tracer.answered, tracer.refused)
        self.service.attach(tracer)
        self.tracer = tracer
        return tracer

    def log_json(self, path: str) -> JsonLog:
        """Write structured JSON logs (``config.log_level`` up) to ``path`` ("-": stderr)."""
        from tailguard.observe.logs import JsonLog

        log = JsonLog(path, service=self.service.spec.name, clock=self.clock,
                      class_names=self.dispatcher.class_names, rung_names=self.service.engine.rung_names,
                      level=self.config.log_level)
        self.dispatcher.tap_replies(log.answered if log.wants_answers else None, log.refused)
        log.capture_stdlib()
        self.service.attach(log)
        self.log = log
        return log

    def _note(self, event: str, **fields: Any) -> None:
        """A lifecycle event for the JSON log (when there is one)."""
        if self.log is not None:
            self.log.event("info", event, **fields)

    # -- state -----------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Serving new requests."""
        return self.state is State.READY

    @property
    def live(self) -> bool:
        """The process is up and its loop turns (READY or DRAINING)."""
        return self.state in (State.READY, State.DRAINING)

    @property
    def draining(self) -> bool:
        """Finishing accepted work, taking no new work."""
        return self.state is State.DRAINING

    # -- start -----------------------------------------------------------------------------
    async def start(self, listeners: Sequence[tuple[str, socket.socket]]) -> None:
        """Serve on already bound sockets: ``("tcp"|"unix", sock)`` for the binary protocol,
        ``("http", sock)`` for HTTP."""
        from tailguard.serve.tcp import BinaryConnection

        for kind, sock in listeners:
            if kind in ("tcp", "unix"):
                server = await self.loop.create_server(
                    lambda: BinaryConnection(self), sock=sock, backlog=self.config.backlog
                )
            elif kind == "http":
                from tailguard.serve.http import HttpConnection

                server = await self.loop.create_server(
                    lambda: HttpConnection(self), sock=sock, backlog=self.config.backlog
                )
            else:
                raise ValueError(f"unknown listener kind {kind!r}")
            self._servers.append(server)
        if self.config.nats:
            from tailguard.serve.natsreply import NatsReplier

            self.nats = NatsReplier(self, self.config.nats, self.config.nats_subject, self.config.nats_queue)
            await self.nats.start()
        if any(kind == "http" for kind, _ in listeners):
            self._warm_metrics()
        if self._gc is not None:
            # Everything built at start (calibration, listeners, the side process's pipes) is
            # here to stay: frozen now, the first middle collection a second into traffic does
            # not sweep it (a 34 ms pause measured on the trading example without this).
            gc.collect()
            gc.freeze()
        self.state = State.READY
        self._schedule_side_path()
        self._note("server.ready", listeners=[kind for kind, _ in listeners])

    def _warm_metrics(self) -> None:
        """Render /metrics once before serving: the first rendering imports the client
        library and builds the registry (~40 ms on the trading example), which would otherwise
        stall the event loop at the first scrape, under traffic (later ones take ~2 ms)."""
        with contextlib.suppress(ImportError):  # no client library: /metrics answers 501, nothing to warm
            from tailguard.serve.metrics import render

            render(self)

    def _maybe_slice(self) -> None:
        """The dispatcher went idle: schedule one side-path slice if enough work gathered."""
        if not self._slice_soon and self.service.side_backlog() >= self.config.side_slice_backlog:
            self._slice_soon = True
            self.loop.call_soon(self._side_slice)

    def _side_slice(self) -> None:
        self._slice_soon = False
        if self.state is State.STOPPED or self.scheduler.total_queued:
            return  # requests first: the next idle moment tries again
        self._last_slice_ns = time.perf_counter_ns()
        self.service.run_side_path(self.config.side_slice_budget_s)
        self.side_slices += 1

    def _schedule_side_path(self) -> None:
        self._side_timer = self.loop.call_later(self.config.side_path_interval_s, self._side_path)

    def _side_path(self) -> None:
        if self.state is State.STOPPED:
            return
        try:
            budget = self.config.side_path_budget_s
            # The timer is the fallback: under steady traffic the idle slices keep up, and a tick
            # doing the same work at an arbitrary moment would only delay a request.
            if time.perf_counter_ns() - self._last_slice_ns >= _SLICE_RECENT_NS:
                self.service.run_side_path(budget)
            self.dispatcher.drain_latency(round(budget * 1e9))
            if self._gc is not None:
                self._gc.tick()
        finally:
            self._schedule_side_path()

    # -- drain and stop --------------------------------------------------------------------
    def begin_drain(self) -> None:
        """Stop taking work; finish what was accepted; then stop (SIGTERM handler)."""
        if self.state is not State.READY:
            return
        self.state = State.DRAINING
        self.dispatcher.start_draining()
        self._note("server.drain", in_flight=self.dispatcher.in_flight)
        for server in self._servers:
            server.close()  # stop accepting; open connections stay
        for conn in list(self.connections):
            notice = getattr(conn, "notice", None)
            if notice is not None:
                notice("draining")
        self.loop.create_task(self._finish_drain())

    async def _finish_drain(self) -> None:
        deadline = self.loop.time() + self.config.drain_timeout_s
        if self.nats is not None:
            await self.nats.drain()  # unsubscribe first: the queue group stops sending here
        while not self.dispatcher.idle and self.loop.time() < deadline:
            await asyncio.sleep(0.001)
        self.dispatcher.flush()
        if self.nats is not None:
            await self.nats.close()  # publishes the last replies
        await asyncio.sleep(0)  # let the last writes reach the transports
        self.stop()

    def stop(self) -> None:
        """Close every listener and connection now."""
        if self.state is State.STOPPED:
            return
        self.state = State.STOPPED
        if self._side_timer is not None:
            self._side_timer.cancel()
        if self._gc is not None:
            self._gc.close()
        d = self.dispatcher
        self._note("server.stop", submitted=d.submitted, answered=d.answered, late=d.late,
                   errors=dict(d.errors), abandoned=d.abandoned)
        self.service.close()  # everything accepted was answered: side tasks write it all, then close
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            t = getattr(conn, "transport", None)
            if t is not None:
                t.close()
        if self.nats is not None and not self.nats.closed:
            self.loop.create_task(self.nats.close())
        self._stopped.set()

    async def wait_stopped(self) -> None:
        """Return once the app has stopped."""
        await self._stopped.wait()

    # -- observability ---------------------------------------------------------------------
    def statistics(self) -> dict[str, Any]:
        """State, connections, dispatcher/scheduler counters and engine counters."""
        return {
            "state": self.state.value,
            "connections": len(self.connections),
            "dispatcher": self.dispatcher.statistics(),
            "engine": self.service.engine.statistics(),
            **({"tracing": self.tracer.statistics()} if self.tracer is not None else {}),
            **({"logs": self.log.statistics()} if self.log is not None else {}),
            **({"drift": self.drift.statistics()} if self.drift is not None else {}),
            **({"nats": self.nats.statistics()} if self.nats is not None else {}),
            **({"rollout": self.rollouts.statistics()} if self.rollouts is not None else {}),
        }
