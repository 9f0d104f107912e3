"""Load generation against a running server: open loop or sequential, binary protocol or HTTP.

``run(target, workload, config)`` returns one report (a JSON-ready dict, shape in
``tailguard.bench.recorder``).  Open loop (``config.rate_hz > 0``): requests go out at the
intended times of a fixed-rate or Poisson schedule whatever the server does, and latency is
measured from those times, so a server (or generator) that falls behind pays for it.
Sequential (``rate_hz == 0``): one request in flight, for latency floors; with ``busy_poll``
the client spins on its socket instead of sleeping.

The generator is built to cost far less than the server it drives: requests are encoded once
per (class, key, context) and stamped with an id per send, replies are decoded by msgspec,
bookkeeping per reply is one histogram record, and it runs on uvloop when installed.  Targets:
``tcp`` (``HOST:PORT``), ``unix`` (a socket path), ``http`` (Open Inference Protocol v2
``infer`` over raw HTTP/1.1 keep-alive) and ``echo`` (a plain frame echo server: the floor).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from tailguard.bench.busypoll import BusyPollClient
from tailguard.bench.drivers import Channel, OpenLoop, Sequential
from tailguard.bench.httpclient import build_request, oip_infer_body, open_http
from tailguard.bench.mix import PriorityMix
from tailguard.bench.openloop import ArrivalSchedule
from tailguard.bench.progress import Progress
from tailguard.bench.recorder import Recorder
from tailguard.bench.wireclient import ServerTimeSink, open_wire, request_templates, split_address

__all__ = ["LoadConfig", "Target", "Workload", "close_channels", "http_requests", "open_channels", "run",
           "run_async", "run_busy_poll", "run_loop", "wire_templates"]

T = TypeVar("T")
Kind = Literal["tcp", "unix", "http", "echo"]


@dataclass(frozen=True)
class Target:
    """Where to send: ``kind`` and ``address`` (``HOST:PORT``, or a path for ``unix``)."""

    kind: Kind
    address: str

    @property
    def url(self) -> str:
        """``tcp://127.0.0.1:7000`` and the like (for reports)."""
        return f"{self.kind}://{self.address}"


@dataclass
class Workload:
    """What to send.  ``keys`` and ``contexts`` are paired round-robin into request templates
    (one set per class).  HTTP: ``model`` names the service (path ``/v2/models/{model}/infer``)
    and ``entity`` the input holding the key; ``http_path``/``http_body`` replace the OIP
    request (for peers speaking their own JSON).  ``send_budget``: put each class budget in the
    request (else the server applies its class budget)."""

    mix: PriorityMix
    keys: list[Any]
    contexts: list[dict[str, Any] | None] = field(default_factory=lambda: [None])
    entity: str = ""
    model: str = ""
    client_id: str = "tailguard-bench"
    send_budget: bool = False
    http_path: str = ""
    http_body: Callable[[Any, dict[str, Any] | None, str], bytes] | None = None
    max_templates: int = 256


@dataclass
class LoadConfig:
    """How to send.  ``rate_hz`` 0 means sequential (``requests`` after ``warmup_requests``).
    ``connections``/``pipeline`` 0 pick per kind: binary 4 connections, unbounded pipelining;
    HTTP 32 connections, one request in flight each.  ``spin_us``: how long before a send the
    sender stops sleeping and polls: the loop's timers round to whole milliseconds (a 1.5 ms
    sleep measured 2.1 ms under uvloop), so the default 2 ms keeps sends on time; 0 saves CPU
    and costs up to ~1 ms of precision."""

    rate_hz: float = 0.0
    duration_s: float = 10.0
    poisson: bool = False
    warmup_s: float = 0.0
    requests: int = 10_000
    warmup_requests: int = 500
    connections: int = 0
    pipeline: int = 0
    spin_us: float = 2000.0
    drain_timeout_s: float = 5.0
    busy_poll: bool = False
    #: Sequential with a plain blocking socket client (no event loop): the floor comparison.
    blocking: bool = False
    seed: int = 1
    progress: bool = False
    label: str = ""


def _budgets_us(workload: Workload) -> list[int]:
    if not workload.send_budget:
        return [0] * len(workload.mix.classes)
    return [round((c.budget_s or 0.0) * 1e6) for c in workload.mix.classes]


def wire_templates(workload: Workload) -> list[list[Any]]:
    """Pre-encoded binary-protocol frames: one list per class."""
    return request_templates(workload.mix.names, workload.keys, workload.contexts,
                             budgets_us=_budgets_us(workload), client_id=workload.client_id,
                             limit=workload.max_templates)


def http_requests(target: Target, workload: Workload) -> list[list[bytes]]:
    """Complete HTTP requests: one list per class."""
    host, port = split_address(target.address)
    path = workload.http_path or f"/v2/models/{workload.model}/infer"
    if not workload.http_path and not workload.model:
        raise ValueError("HTTP needs the service name (the model of /v2/models/{name}/infer)")
    if workload.http_body is None and not workload.entity:
        raise ValueError("HTTP needs the entity name (the input that carries the key)")
    keys, ctxs = workload.keys, workload.contexts
    n = min(max(len(keys), len(ctxs)), workload.max_templates)
    out: list[list[bytes]] = []
    for cls, budget in zip(workload.mix.classes, _budgets_us(workload), strict=True):
        reqs = []
        for i in range(n):
            key, ctx = keys[i % len(keys)], ctxs[i % len(ctxs)]
            if workload.http_body is not None:
                body = workload.http_body(key, ctx, cls.name)
            else:
                body = oip_infer_body(workload.entity, key, ctx, priority=cls.name, timeout_us=budget)
            reqs.append(build_request(f"{host}:{port}", path, body))
        out.append(reqs)
    return out


async def open_channels(target: Target, workload: Workload, sink: Any, n: int, capacity: int, *,
                        server_time: ServerTimeSink | None = None) -> list[Channel]:
    """``n`` connections to ``target`` carrying ``workload``'s pre-built requests, each allowing
    ``capacity`` in flight, replies to ``sink`` (binary connections have done the handshake;
    they also pass the server's own time per reply to ``server_time``)."""
    clock = time.perf_counter_ns
    chans: list[Channel] = []
    if target.kind == "http":
        reqs = http_requests(target, workload)
        for _ in range(n):
            chans.append(await open_http(target.address, reqs, sink, clock, capacity=capacity))
        return chans
    tpls = wire_templates(workload)
    address = f"unix:{target.address}" if target.kind == "unix" else target.address
    for _ in range(n):
        ch = await open_wire(address, tpls, sink, clock, echo=target.kind == "echo",
                             client_id=workload.client_id, server_time=server_time)
        ch.capacity = capacity
        chans.append(ch)
    return chans


def _header(target: Target, workload: Workload, config: LoadConfig, mode: str) -> dict[str, Any]:
    return {"target": target.url, "mode": mode, "mix": workload.mix.describe()}


async def run_async(target: Target, workload: Workload, config: LoadConfig) -> dict[str, Any]:
    """One run (open loop or sequential, per ``config.rate_hz``) on the running loop."""
    clock = time.perf_counter_ns
    recorder = Recorder(workload.mix)
    n_tpl = min(max(len(workload.keys), len(workload.contexts)), workload.max_templates)
    if config.rate_hz <= 0:
        seq = Sequential(workload.mix, n_tpl, recorder, clock=clock, seed=config.seed)
        (ch,) = await open_channels(target, workload, seq.sink, 1, 1, server_time=recorder.on_server_time)
        t0 = clock()
        try:
            await seq.run(ch, config.requests, warmup=config.warmup_requests)
        finally:
            close_channels([ch])
        span = (clock() - max(recorder.record_from_ns, t0)) / 1e9
        return {**_header(target, workload, config, "sequential"), "requests": config.requests,
                "warmup_requests": config.warmup_requests, "elapsed_s": round(span, 3),
                **recorder.report(span)}
    http = target.kind == "http"
    n_conn = config.connections or (32 if http else 4)
    capacity = config.pipeline or (1 if http else 1 << 30)
    progress = Progress(config.duration_s, label=config.label) if config.progress else None
    loop = OpenLoop(workload.mix, n_tpl, recorder, clock=clock, spin_ns=int(config.spin_us * 1e3),
                    seed=config.seed, progress=progress)
    chans = await open_channels(target, workload, loop.sink, n_conn, capacity,
                                server_time=recorder.on_server_time)
    recorder.record_from_ns = 1 << 62
    await loop.prime(chans)
    start = clock() + 20_000_000  # a moment to settle after connecting
    recorder.record_from_ns = start + int(config.warmup_s * 1e9)
    schedule = ArrivalSchedule(start, config.rate_hz, config.duration_s, poisson=config.poisson,
                               seed=config.seed)
    try:
        drain_s = await loop.run(chans, schedule, drain_timeout_s=config.drain_timeout_s)
    finally:
        close_channels(chans)
        if progress is not None:
            progress.close()
    window = max(config.duration_s - config.warmup_s, 1e-9)
    return {**_header(target, workload, config, "open"), "rate_hz": config.rate_hz,
            "arrivals": "poisson" if config.poisson else "fixed", "duration_s": config.duration_s,
            "warmup_s": config.warmup_s, "connections": n_conn,
            "pipeline": None if capacity >= 1 << 30 else capacity, "scheduled": loop.sent,
            "drain_s": round(drain_s, 3), "aborted": loop.aborted, **recorder.report(window)}


def close_channels(chans: list[Channel]) -> None:
    """Close connections opened by ``open_channels``."""
    for ch in chans:
        close = getattr(ch, "close", None)
        if close is not None:
            close()


def run_busy_poll(target: Target, workload: Workload, config: LoadConfig) -> dict[str, Any]:
    """A sequential run with a client spinning on its socket, or blocking in ``recv`` when
    ``config.blocking`` (binary protocol or echo only)."""
    if target.kind == "http":
        raise ValueError("busy-poll runs speak the binary protocol (tcp, unix or echo)")
    address = f"unix:{target.address}" if target.kind == "unix" else target.address
    recorder = Recorder(workload.mix)
    client = BusyPollClient(address, echo=target.kind == "echo", client_id=workload.client_id,
                            spin=config.busy_poll)
    try:
        span = client.run(wire_templates(workload), workload.mix, recorder, config.requests,
                          warmup=config.warmup_requests, seed=config.seed)
    finally:
        client.close()
    mode = "sequential-busy-poll" if config.busy_poll else "sequential-blocking"
    return {**_header(target, workload, config, mode), "requests": config.requests,
            "warmup_requests": config.warmup_requests, "elapsed_s": round(span, 3),
            **recorder.report(span)}


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh uvloop loop (asyncio's when uvloop is missing)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def run(target: Target, workload: Workload, config: LoadConfig) -> dict[str, Any]:
    """One load run, start to finish, in the calling thread; returns the report."""
    if config.busy_poll or config.blocking:
        if config.rate_hz > 0:
            raise ValueError("busy-poll and blocking are sequential modes: leave the rate unset")
        return run_busy_poll(target, workload, config)
    return run_loop(run_async(target, workload, config))
