"""Processes: bind listeners, run one serving process, or supervise several.

``--workers 1`` serves in the calling process.  ``--workers N`` starts a supervisor that binds
the listening sockets once and starts N worker processes that inherit them (one shared
accept queue per listener: an idle worker accepts first, and a worker's death loses no
connection still waiting in the queue — with SO_REUSEPORT each worker owns a queue and the
connections waiting in a dead worker's queue are reset).  ``--reuseport`` selects the
SO_REUSEPORT layout instead, for measurement.  The supervisor restarts a worker that dies,
with a capped backoff, and forwards SIGTERM so every worker drains.

Workers are started with ``python -m tailguard.serve.workers`` (a fresh interpreter: no
forking of a process that already runs ONNX Runtime threads).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tailguard.serve.app import App, ServeConfig

__all__ = ["bind_listeners", "main", "run_worker", "serve", "supervise"]

Listener = tuple[str, socket.socket]


def parse_hostport(value: str) -> tuple[str, int]:
    """``"host:port"`` (IPv6 as ``"[::1]:port"``) -> (host, port)."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _tcp_socket(address: str, *, reuseport: bool) -> socket.socket:
    host, port = parse_hostport(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _unix_socket(path: str) -> socket.socket:
    p = Path(path)
    if p.is_socket():
        p.unlink()  # a stale socket from a previous run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    return sock


def bind_listeners(config: ServeConfig, *, listen: bool = True) -> list[Listener]:
    """Bind every configured listener (``listen``: also start listening, so connections queue
    while workers load)."""
    out: list[Listener] = []
    if config.tcp:
        out.append(("tcp", _tcp_socket(config.tcp, reuseport=config.reuseport)))
    if config.unix:
        out.append(("unix", _unix_socket(config.unix)))
    if config.http:
        out.append(("http", _tcp_socket(config.http, reuseport=config.reuseport)))
    if config.metrics and config.workers <= 1:
        out.append(("http", _tcp_socket(config.metrics, reuseport=False)))
    if listen:
        for kind, sock in out:
            if not (config.reuseport and kind != "unix"):
                sock.listen(config.backlog)
    return out


def addresses(listeners: Sequence[Listener]) -> dict[str, str]:
    """Where each listener is bound, as written to the ready file."""
    out: dict[str, str] = {}
    for kind, sock in listeners:
        name = sock.getsockname()
        out[kind] = name if isinstance(name, str) else f"{name[0]}:{name[1]}"
    return out


def _write_ready(path: str | None, info: dict[str, Any]) -> None:
    if path is None:
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, path)


def new_loop(config: ServeConfig) -> asyncio.AbstractEventLoop:
    """uvloop when installed, a spinning selector loop in busy-poll mode, else asyncio's."""
    if config.busy_poll:
        from tailguard.serve.busypoll import new_busy_poll_loop

        return new_busy_poll_loop()
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run_worker(service_dir: str, config: ServeConfig, listeners: Sequence[Listener],
               on_ready: Callable[[], None]) -> int:
    """Load the service and serve ``listeners`` in this process until drained."""
    from tailguard.service import load_service, tune_gc

    service = load_service(service_dir, online_url=config.online_url)
    tune_gc()
    loop = new_loop(config)
    asyncio.set_event_loop(loop)
    app = App(service, config, loop)
    private = None
    if config.metrics_socket_dir:  # the supervisor's aggregated /metrics scrapes us here
        private = Path(config.metrics_socket_dir) / f"{os.getpid()}.sock"
        sock = _unix_socket(str(private))
        sock.listen(64)
        listeners = [*listeners, ("http", sock)]
    try:
        loop.run_until_complete(app.start(listeners))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, app.begin_drain)
        on_ready()
        loop.run_until_complete(app.wait_stopped())
        # Let the transports write what the drain flushed before the loop goes.
        loop.run_until_complete(asyncio.sleep(0.01))
    finally:
        service.engine.close()
        loop.close()
        if private is not None:
            private.unlink(missing_ok=True)
    return 0


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one (a server holds one descriptor per
    client connection; the usual soft default of 1024 is far too low).  Returns the limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def serve(service_dir: str, config: ServeConfig, ready_file: str | None = None) -> int:
    """``tailguard serve``: one process, or a supervisor of ``config.workers`` processes."""
    raise_fd_limit()
    listeners = bind_listeners(config)
    info: dict[str, Any] = {**addresses(listeners), "pid": os.getpid()}
    if config.workers <= 1:
        return run_worker(service_dir, config, listeners,
                          lambda: _write_ready(ready_file, {**info, "workers": [os.getpid()]}))
    return supervise(service_dir, config, listeners, info, ready_file)


# -- the supervisor --------------------------------------------------------------------------
class _Worker:
    def __init__(self, proc: subprocess.Popen[bytes], ready_fd: int) -> None:
        self.proc = proc
        self.ready_fd = ready_fd
        self.ready = False


def _spawn(service_dir: str, config: ServeConfig, listeners: Sequence[Listener]) -> _Worker:
    r, w = os.pipe()
    specs = []
    fds = [w]
    for kind, sock in listeners:
        if config.reuseport and kind != "unix":
            specs.append(f"{kind}=bind:{addresses([(kind, sock)])[kind]}")
        else:
            specs.append(f"{kind}=fd:{sock.fileno()}")
            fds.append(sock.fileno())
    cmd = [sys.executable, "-m", "tailguard.serve.workers", service_dir,
           "--config", json.dumps(dataclasses.asdict(config)),
           "--ready-fd", str(w), *[a for s in specs for a in ("--listener", s)]]
    proc = subprocess.Popen(cmd, pass_fds=fds)
    os.close(w)
    return _Worker(proc, r)


def supervise(service_dir: str, config: ServeConfig, listeners: Sequence[Listener],
              info: dict[str, Any], ready_file: str | None) -> int:
    """Start, watch and restart ``config.workers`` workers until SIGTERM/SIGINT."""
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    restarts = 0
    aggregator = None
    if config.metrics:
        from tailguard.serve.aggregate import MetricsAggregator

        address = parse_hostport(config.metrics)
        run_dir = tempfile.mkdtemp(prefix="tailguard-metrics-")
        config = dataclasses.replace(config, metrics_socket_dir=run_dir)
        aggregator = MetricsAggregator(address, run_dir,
                                       expected=lambda: config.workers, restarts=lambda: restarts)
        aggregator.start()
        info = {**info, "metrics": aggregator.address}
    workers = [_spawn(service_dir, config, listeners) for _ in range(config.workers)]
    backoff = 0.1
    published = False
    while not stopping:
        pending = {w.ready_fd: w for w in workers if not w.ready}
        if pending:
            readable, _, _ = select.select(list(pending), [], [], 0.05)
            for fd in readable:
                w = pending[fd]
                w.ready = os.read(fd, 1) == b"R"
                os.close(fd)
                w.ready_fd = -1
        else:
            time.sleep(0.05)
        for i, w in enumerate(workers):
            if w.proc.poll() is not None and not stopping:
                print(f"tailguard: worker {w.proc.pid} exited with {w.proc.returncode}; restarting",
                      file=sys.stderr, flush=True)
                if w.ready_fd >= 0:
                    os.close(w.ready_fd)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                workers[i] = _spawn(service_dir, config, listeners)
                restarts += 1
                published = False
        if all(w.ready for w in workers):
            backoff = 0.1
            if not published:
                _write_ready(ready_file, {**info, "workers": [w.proc.pid for w in workers],
                                          "restarts": restarts})
                published = True
    for w in workers:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
    end = time.monotonic() + config.drain_timeout_s + 5.0
    for w in workers:
        try:
            w.proc.wait(max(end - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()
    if aggregator is not None:
        aggregator.close()
        shutil.rmtree(aggregator.run_dir, ignore_errors=True)
    return 0


# -- the worker entry point ------------------------------------------------------------------
def _listener(spec: str, config: ServeConfig) -> Listener:
    kind, _, where = spec.partition("=")
    how, _, value = where.partition(":")
    if how == "fd":
        # socket(fileno=) reads family and type from the descriptor itself.
        return kind, socket.socket(fileno=int(value))
    sock = _tcp_socket(value, reuseport=True)
    sock.listen(config.backlog)
    return kind, sock


def _die_with_parent() -> None:
    """Linux: get SIGTERM (and drain) if the supervisor dies, instead of living on orphaned."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def main(argv: Sequence[str] | None = None) -> int:
    """A worker started by the supervisor."""
    ap = argparse.ArgumentParser(prog="tailguard-worker")
    ap.add_argument("service_dir")
    ap.add_argument("--config", required=True)
    ap.add_argument("--ready-fd", type=int, required=True)
    ap.add_argument("--listener", action="append", default=[])
    args = ap.parse_args(argv)
    _die_with_parent()
    raise_fd_limit()
    config = ServeConfig(**json.loads(args.config))
    listeners = [_listener(s, config) for s in args.listener]

    def ready() -> None:
        os.write(args.ready_fd, b"R")
        os.close(args.ready_fd)

    return run_worker(args.service_dir, config, listeners, ready)


if __name__ == "__main__":
    sys.exit(main())
