"""Publish the synthetic ticks on a NATS JetStream subject: the feature ingest worker's input.

    python examples/trading/publish.py nats://127.0.0.1:4222 [--stream TICKS] [--subject ticks]
        [--seconds 600] [--instruments 8] [--seed 0] [--per-message 64] [--rate 0] [--live]

Each event is a MessagePack map: ``instrument`` (the entity key), ``ts_ns`` (event time),
``bid``, ``ask``, ``bid_size``, ``ask_size``, ``trade_size`` (``ticks.generate_ticks``).
``--per-message K`` packs up to K events, in order, into one message as a MessagePack array
(the ingest worker's batch body: one NATS message costs the worker ~5 µs, so batches are
what take it past 100k events/s); ``--per-message 1`` sends one map per message.

``--rate N`` sends N events/s on a fixed schedule (0: as fast as possible); a message then
holds the events due at its send time (at most K), so batching adds no delay at low rates.
``--live`` stamps each event with the wall-clock time it was due (its intended send time),
so that features served from the store are fresh; without it the generated event times are
kept (deterministic for a seed: tests compare the worker's rows with an in-process replay).

The stream (file storage) is created when missing, capturing ``SUBJECT``; so is a stream
``<STREAM>_DEAD`` for the worker's dead letters on ``SUBJECT.dead``.  Prints the stream
sequence of the last message (what the worker must reach).  Needs nats-py
(``pip install 'tailguard[nats]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from ticks import generate_ticks  # noqa: E402

FIELDS = ("ts_ns", "bid", "ask", "bid_size", "ask_size", "trade_size")


def tick_events(seconds: float, n_instruments: int = 8, seed: int = 0) -> list[dict[str, Any]]:
    """The generated ticks as events keyed by ``instrument``, in event-time order."""
    cols = generate_ticks(seconds, n_instruments=n_instruments, seed=seed)
    lists = {k: cols[k].tolist() for k in FIELDS}
    symbols = cols["symbol"].tolist()
    return [{"instrument": s, **{k: lists[k][i] for k in FIELDS}} for i, s in enumerate(symbols)]


def encode_bodies(events: Sequence[dict[str, Any]], per_message: int) -> list[bytes]:
    """Message bodies: one map each (``per_message`` 1), else arrays of up to ``per_message``."""
    enc = msgspec.msgpack.Encoder()
    if per_message <= 1:
        return [enc.encode(e) for e in events]
    return [enc.encode(events[i : i + per_message]) for i in range(0, len(events), per_message)]


async def ensure_streams(js: JetStreamContext, stream: str, subject: str) -> None:
    """Create ``stream`` (capturing ``subject``) and ``<stream>_DEAD`` (``<subject>.dead``) if missing."""
    for name, subj in ((stream, subject), (f"{stream}_DEAD", f"{subject}.dead")):
        try:
            await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            await js.add_stream(StreamConfig(name=name, subjects=[subj], storage=StorageType.FILE))


async def publish(url: str, events: Sequence[dict[str, Any]], *, stream: str = "TICKS",
                  subject: str = "ticks", per_message: int = 64, rate: float = 0.0,
                  live: bool = False) -> int:
    """Publish ``events`` in order (see the module doc); returns the last message's stream
    sequence.  Core NATS publishes, the last one acknowledged by JetStream: one connection
    keeps the order, so every earlier message is stored when that ack comes."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=10.0)
        await ensure_streams(js, stream, subject)
        enc = msgspec.msgpack.Encoder()
        n, i, sent = len(events), 0, 0
        start = time.time_ns()
        last = 0
        while i < n:
            j = min(n, i + max(per_message, 1))
            if rate > 0:
                due = min(n, int((time.time_ns() - start) * rate / 1e9) + 1)  # the schedule: open loop
                if due <= i:
                    await asyncio.sleep(max(0.0, min((start + i * 1e9 / rate - time.time_ns()) / 1e9, 0.001)))
                    continue
                j = min(j, due)
            chunk: list[dict[str, Any]] = list(events[i:j])
            if live:
                now = time.time_ns()
                chunk = [{**ev, "ts_ns": start + round(k * 1e9 / rate) if rate > 0 else now}
                         for k, ev in enumerate(chunk, i)]
            body = enc.encode(chunk[0]) if per_message <= 1 else enc.encode(chunk)
            if j == n:
                last = int((await js.publish(subject, body)).seq)
            else:
                await nc.publish(subject, body)
                sent += 1
                if sent % 256 == 0:
                    await nc.flush()
            i = j
        return last
    finally:
        await nc.close()


def main() -> None:
    """The command line (see the module doc)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("url", help="e.g. nats://127.0.0.1:4222")
    ap.add_argument("--stream", default="TICKS")
    ap.add_argument("--subject", default="ticks")
    ap.add_argument("--seconds", type=float, default=600.0, help="seconds of generated ticks")
    ap.add_argument("--instruments", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-message", type=int, default=64, help="events per message (1: one map each)")
    ap.add_argument("--rate", type=float, default=0.0, help="events/s on a fixed schedule (0: at once)")
    ap.add_argument("--live", action="store_true", help="event time = intended send time (wall clock)")
    args = ap.parse_args()
    events = tick_events(args.seconds, args.instruments, args.seed)
    t0 = time.perf_counter()
    last = asyncio.run(publish(args.url, events, stream=args.stream, subject=args.subject,
                               per_message=args.per_message, rate=args.rate, live=args.live))
    dt = time.perf_counter() - t0
    print(f"published {len(events)} ticks in {dt:.1f} s ({len(events) / dt:,.0f}/s) to {args.stream}/"
          f"{args.subject}; last stream sequence {last}", file=sys.stderr)
    print(last)


if __name__ == "__main__":
    main()
