"""The feature ingest worker: NATS JetStream events -> stream processor -> online store.

``IngestWorker`` consumes one subject of a JetStream stream through a durable pull consumer
(``ingest_nats``) and feeds every message to a ``StreamProcessor`` with ``seq`` = the
message's stream sequence.  A message body, MessagePack (``BodyFormat.MSGPACK``, the
default) or JSON (``BodyFormat.JSON``), decoded with msgspec in one call, is either

* ONE event, a map; or
* a **batch**: an array of events (maps), in event order.  A batch is one message, so it is
  folded in whole at its stream sequence: an event's position (its idempotency key for
  redelivery) is (stream sequence, index in the array).  Batches are what make ingest fast:
  nats-py costs ~5 µs per message, a batch of 64 spreads that over 64 events
  (``examples/trading/publish.py --per-message``, ``docs/features.md``).  An array
  holding anything but maps is undecodable as a whole (reason ``decode``, nothing applied).

Per fetched batch: every event is folded in (``write_through=False``), the changed rows are
written with one ``flush()`` (a store that is down is retried with backoff; nothing is acked
meanwhile) and the batch's dead letters are published.  Every ``checkpoint_interval_s`` (and
whenever the stream goes idle, and on close) the batch range is *committed*: the checkpoint
is written (``ingest_checkpoint``: the states at ``last_seq``, atomically, after the flush)
and then the last message is acknowledged, which acknowledges the range.

Delivery is at-least-once and application idempotent, so "NATS down -> resume from the
durable position with no loss and no double count" holds:

* NATS down: the session ends (the connection does not reconnect by itself); the worker
  keeps its in-memory states, retries with exponential backoff, and at the next session
  makes the consumer resume right after the last applied sequence.  Unacknowledged messages
  that come again at or below it are counted as duplicates, never applied twice.
* Worker restart (or crash): the checkpoint restores the states at the last commit and the
  consumer is moved to resume right after it; the rows written since are recomputed from
  the same states and events, so they come out the same, bit for bit.

Why a checkpoint file rather than a position stored with the rows: the aggregates' states
are the worker's memory and must survive with the position, not just the position; a file
works the same for the in-memory and the Redis store.  Without a ``checkpoint`` every start
rebuilds the states from the beginning of the stream (it must still hold the history).

Poison events (``[stream].on_bad = "dead_letter"``; undecodable bodies are reason
``decode``) are published to ``dead_letter_subject`` (default ``<subject>.dead``): the body
as received, headers ``Tailguard-Reason`` (the ``EventReason`` code), ``Tailguard-Detail``,
``Tailguard-Subject``, ``Tailguard-Stream``, ``Tailguard-Stream-Seq`` and ``Nats-Msg-Id``; an event
of a batch is published alone, re-encoded in the body format, with ``Tailguard-Index`` (its
index in the batch) besides.
When a stream captures that subject each publish waits for its ack and a repeat is dropped
by JetStream (at-least-once, no duplicates within its window); otherwise it is a core NATS
publish (at most once).  Then the event is acked with its batch and ingest goes on.  With
``"raise"`` the worker stops at that event, uncommitted (``fatal``).

Thread ownership: the processor and its store belong to the worker while it runs (``run`` on
the caller's event loop, or ``start`` for a thread with its own); ``stop``, ``close``,
``wait_applied`` and ``statistics`` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from tailguard.clock import Clock, MonotonicClock
from tailguard.errors import ValidationError
from tailguard.features.events import EventReason, action_for
from tailguard.features.ingest_checkpoint import CheckpointHeader, load_checkpoint, write_checkpoint
from tailguard.features.ingest_nats import (
    NATS_FAILURES,
    Msg,
    NatsClient,
    Puller,
    connect,
    dead_letter_stream,
    reconcile_consumer,
    stream_seq,
)
from tailguard.features.online.errors import FeatureStoreUnavailable
from tailguard.features.stream import StreamProcessor
from tailguard.features.view import FeatureView
from tailguard.spec import EventAction

__all__ = ["BodyFormat", "IngestConfig", "IngestWorker"]

_EMPTY: Mapping[str, Any] = {}


class BodyFormat(enum.Enum):
    """How a message body encodes its event (a map)."""

    MSGPACK = "msgpack"
    JSON = "json"


@dataclass(frozen=True)
class IngestConfig:
    """Where the worker reads and how.  ``batch``: messages per pull request (two are kept in
    flight); ``fetch_timeout_s``: how long one request waits on the server; durations in s."""

    nats_url: str
    stream: str
    subject: str
    durable: str = "tailguard-ingest"
    body: BodyFormat = BodyFormat.MSGPACK
    #: Default ``<subject>.dead`` (required when ``subject`` has wildcards).
    dead_letter_subject: str | None = None
    #: The checkpoint file (None: no checkpoint, every start rebuilds from the stream start).
    checkpoint: str | Path | None = None
    checkpoint_interval_s: float = 1.0
    batch: int = 512
    fetch_timeout_s: float = 1.0
    ack_wait_s: float = 30.0
    max_ack_pending: int = 1_000_000
    connect_timeout_s: float = 2.0
    api_timeout_s: float = 2.0
    backoff_s: float = 0.1
    max_backoff_s: float = 2.0

    @property
    def dead_subject(self) -> str:
        """The dead-letter subject in use."""
        if self.dead_letter_subject is not None:
            return self.dead_letter_subject
        if "*" in self.subject or ">" in self.subject:
            raise ValueError(f"subject {self.subject!r} has wildcards: name a dead_letter_subject")
        return f"{self.subject}.dead"


class _Stopped(Exception):
    """The worker was asked to stop while waiting for the store."""


class IngestWorker:
    """Feeds ``processor`` from JetStream as ``config`` says (see the module doc).

    ``views``: the compiled views (their versions guard the checkpoint).  Unless the processor
    already applied events, the checkpoint (if any) is loaded here: ``restored`` is its header."""

    def __init__(self, processor: StreamProcessor, views: Mapping[str, FeatureView], config: IngestConfig,
                 *, clock: Clock | None = None) -> None:
        self.processor, self.views, self.config = processor, views, config
        self.dead_subject = config.dead_subject
        self._clock = clock or MonotonicClock()
        processor.write_through = False
        processor.dead_letter = self._on_dead_letter
        msgpack = config.body is BodyFormat.MSGPACK
        self._decode = (msgspec.msgpack.Decoder() if msgpack else msgspec.json.Decoder()).decode
        self._encode = (msgspec.msgpack.Encoder() if msgpack else msgspec.json.Encoder()).encode
        self.restored: CheckpointHeader | None = None
        if config.checkpoint is not None and processor.last_seq == 0:
            self.restored = load_checkpoint(config.checkpoint, processor, views, stream=config.stream,
                                            durable=config.durable)
        #: The last stream sequence whose state is committed (checkpointed and acked).
        self.committed_seq = processor.last_seq
        self._cur: Msg | None = None
        self._cur_seq = 0
        self._cur_index: int | None = None  # the event's index in a batch body (None: a one-event body)
        self._dead: deque[tuple[str, bytes, int, int | None, EventReason, str]] = deque()
        self._dead_js = False
        self._last_msg: Msg | None = None
        self._commit_ns = self._clock.now_ns()
        self._stop = threading.Event()
        self._applied = threading.Condition()
        self._thread: threading.Thread | None = None
        self.messages = self.batches = self.commits = self.connects = self.failures = 0
        self.store_failures = self.consumer_resets = 0
        self.dead_letters = dict.fromkeys(EventReason, 0)
        self.connected = False
        self._was_consuming = False
        self.last_error = ""
        self.fatal: BaseException | None = None

    # -- any thread ------------------------------------------------------------------------------
    def start(self) -> IngestWorker:
        """Run on a new daemon thread with its own event loop (returns self)."""
        self._thread = threading.Thread(target=self._thread_main, daemon=True,
                                        name=f"tailguard-ingest-{self.config.durable}")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the worker to commit what it applied and return (thread-safe, returns at once)."""
        self._stop.set()
        with self._applied:
            self._applied.notify_all()

    def close(self, timeout_s: float = 10.0) -> None:
        """``stop`` and wait for the thread started by ``start``."""
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def wait_applied(self, seq: int, timeout_s: float, *, committed: bool = False) -> bool:
        """Wait until the stream sequence ``seq`` is applied (``committed``: and committed);
        False on timeout, on a fatal error or when stopped."""
        def done() -> bool:
            at = self.committed_seq if committed else self.processor.last_seq
            return at >= seq or self.fatal is not None or self._stop.is_set()

        with self._applied:
            ok = self._applied.wait_for(done, timeout_s)
        at = self.committed_seq if committed else self.processor.last_seq
        return ok and at >= seq

    def statistics(self) -> dict[str, Any]:
        """Worker counters, the positions, dead letters per reason and the processor's counters
        (``events``: every event in ``applied``, ``ignored`` or one reason)."""
        return {"stream": self.config.stream, "subject": self.config.subject, "durable": self.config.durable,
                "connected": self.connected, "connects": self.connects, "failures": self.failures,
                "store_failures": self.store_failures, "consumer_resets": self.consumer_resets,
                "messages": self.messages, "batches": self.batches, "commits": self.commits,
                "applied_seq": self.processor.last_seq, "committed_seq": self.committed_seq,
                "dead_letters": {r.value: n for r, n in self.dead_letters.items() if n},
                "dead_letters_pending": len(self._dead), "last_error": self.last_error,
                "fatal": None if self.fatal is None else repr(self.fatal),
                "events": self.processor.statistics()}

    # -- the worker's loop -----------------------------------------------------------------------
    def _thread_main(self) -> None:
        try:
            asyncio.run(self.run())
        except Exception:  # recorded in self.fatal, shown by statistics()
            return

    async def run(self, *, until_idle: bool = False) -> None:
        """Ingest until ``stop`` (or, with ``until_idle``, until the consumer has nothing left
        to deliver), on the calling loop.  NATS failures are retried with backoff; anything
        else (a ``"raise"`` policy, a checkpoint that cannot be written) is fatal: it is kept
        in ``fatal`` and raised."""
        backoff = self.config.backoff_s
        if self.restored is not None:
            await self._flush()  # the restored rows, into a store that may be fresh
        try:
            while not self._stop.is_set():
                try:
                    await self._session(until_idle)
                    return
                except NATS_FAILURES as exc:
                    self.failures += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                if self._was_consuming:  # it worked until now: start again from the shortest pause
                    backoff = self.config.backoff_s
                await self._pause(backoff)
                backoff = min(backoff * 2, self.config.max_backoff_s)
        except _Stopped:
            return
        except BaseException as exc:
            self.fatal = exc
            raise
        finally:
            with self._applied:
                self._applied.notify_all()

    async def _session(self, until_idle: bool) -> None:
        cfg = self.config
        self._was_consuming = False
        nc = await connect(cfg.nats_url, cfg.connect_timeout_s)
        try:
            self.connected = True
            self.connects += 1
            js = nc.jetstream(timeout=cfg.api_timeout_s)
            await js.stream_info(cfg.stream)
            self._dead_js = await dead_letter_stream(js, self.dead_subject)
            self._last_msg = None  # acks of the lost connection cannot be sent: commit by position
            await self._publish_dead(nc)  # left over from the last session
            if self.processor.last_seq > self.committed_seq:
                self._checkpoint()
            if await reconcile_consumer(js, cfg.stream, cfg.durable, cfg.subject, self.processor.last_seq,
                                        ack_wait_s=cfg.ack_wait_s, max_ack_pending=cfg.max_ack_pending):
                self.consumer_resets += 1
            self.committed_seq = self.processor.last_seq
            puller = Puller(nc, cfg.stream, cfg.durable, cfg.batch, cfg.fetch_timeout_s, self._clock)
            await puller.start()
            self._was_consuming = True
            while not self._stop.is_set():
                msgs = await puller.take(0.1)
                if msgs:
                    self._apply(msgs)
                    await self._flush()
                    await self._publish_dead(nc)
                    self._last_msg = msgs[-1]
                    self.messages += len(msgs)
                    self.batches += 1
                    with self._applied:
                        self._applied.notify_all()
                    due = self._clock.now_ns() - self._commit_ns >= cfg.checkpoint_interval_s * 1e9
                    if due:
                        await self._commit()
                elif self._last_msg is not None:
                    await self._commit()  # idle: commit what is applied
                elif until_idle and (await js.consumer_info(cfg.stream, cfg.durable)).num_pending == 0:
                    return
            if self._last_msg is not None:
                await self._commit()
        finally:
            self.connected = False
            try:
                await nc.close()
            except NATS_FAILURES:
                self.last_error = self.last_error or "close failed"

    # -- one batch -------------------------------------------------------------------------------
    def _apply(self, msgs: list[Msg]) -> None:
        p = self.processor
        decode, process = self._decode, p.process
        for m in msgs:
            seq = stream_seq(m.reply)
            self._cur, self._cur_seq, self._cur_index = m, seq, None
            if seq <= p.last_seq:
                self._redelivered(m.data, seq)
                continue
            try:
                body = decode(m.data)
            except msgspec.DecodeError as exc:
                self._undecodable(seq, f"{self.config.body.value} body: {exc}")
                continue
            kind = type(body)
            if kind is dict:
                process(body, seq=seq)
            elif kind is list and all(type(ev) is dict for ev in body):
                # A batch: every event at this one stream position; the message is applied
                # whole before the batch it came in is flushed, checkpointed or acked.
                for i, ev in enumerate(body):
                    self._cur_index = i
                    process(ev)
                p.last_seq = seq
            else:
                what = "an array holding a non-map" if kind is list else f"a {kind.__name__}"
                self._undecodable(seq, f"body is {what}, not a map or an array of maps")
        self._cur = None

    def _redelivered(self, data: bytes, seq: int) -> None:
        # Counted (and routed) as duplicates, one per event the message holds.
        n = 1
        try:
            body = self._decode(data)
        except msgspec.DecodeError:
            body = None
        if type(body) is list:
            n = len(body)
        for i in range(n):
            self._cur_index = i if type(body) is list else None
            self.processor.process(_EMPTY, seq=seq)

    def _undecodable(self, seq: int, detail: str) -> None:
        # Counted in the processor's buckets like any other reason (every event in one bucket).
        p = self.processor
        p.last_seq = seq
        p.rejected[EventReason.DECODE] += 1
        action = action_for(p.config, EventReason.DECODE)
        if action is EventAction.DEAD_LETTER:
            p.dead_lettered += 1
            self._on_dead_letter(_EMPTY, EventReason.DECODE, detail)
        elif action is EventAction.RAISE:
            raise ValidationError(f"bad event (decode): {detail}", field="body")

    def _on_dead_letter(self, event: Mapping[str, Any], reason: EventReason, detail: str) -> None:
        m = self._cur
        if m is not None:
            index = self._cur_index
            data = m.data if index is None or event is _EMPTY else self._encode(event)
            self._dead.append((m.subject, data, self._cur_seq, index, reason, detail))

    async def _flush(self) -> None:
        backoff = self.config.backoff_s
        while True:
            try:
                self.processor.flush()
                return
            except FeatureStoreUnavailable as exc:  # rows stay marked: the next flush writes them
                self.store_failures += 1
                self.last_error = f"store: {exc}"
            await self._pause(backoff)
            if self._stop.is_set():
                raise _Stopped
            backoff = min(backoff * 2, self.config.max_backoff_s)

    async def _publish_dead(self, nc: NatsClient) -> None:
        if not self._dead:
            return
        cfg = self.config
        js = nc.jetstream(timeout=cfg.api_timeout_s)
        while self._dead:
            subject, data, seq, index, reason, detail = self._dead[0]
            msg_id = f"tailguard-dead:{cfg.stream}:{seq}"
            headers = {"Tailguard-Reason": reason.value, "Tailguard-Detail": _header_value(detail),
                       "Tailguard-Subject": subject, "Tailguard-Stream": cfg.stream,
                       "Tailguard-Stream-Seq": str(seq), "Nats-Msg-Id": msg_id}
            if index is not None:
                headers["Tailguard-Index"] = str(index)
                headers["Nats-Msg-Id"] = f"{msg_id}:{index}"
            if self._dead_js:
                await js.publish(self.dead_subject, data, headers=headers)
            else:
                await nc.publish(self.dead_subject, data, headers=headers)
            self._dead.popleft()
            self.dead_letters[reason] += 1
        if not self._dead_js:
            await nc.flush(max(1, round(cfg.api_timeout_s)))

    def _checkpoint(self) -> None:
        cfg = self.config
        if cfg.checkpoint is not None:
            write_checkpoint(cfg.checkpoint, self.processor, self.views, stream=cfg.stream,
                             durable=cfg.durable, subject=cfg.subject, wall_ns=self._clock.wall_ns())

    async def _commit(self) -> None:
        """Checkpoint (after the flush), then acknowledge the range (AckPolicy.ALL)."""
        self._checkpoint()
        last = self._last_msg
        if last is not None:
            await last.ack()
        self._last_msg = None
        self.committed_seq = self.processor.last_seq
        self._commit_ns = self._clock.now_ns()
        self.commits += 1
        with self._applied:
            self._applied.notify_all()

    async def _pause(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stop.is_set() and (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.05))


def _header_value(text: str, limit: int = 1024) -> str:
    """One header line: no CR/LF, at most ``limit`` characters."""
    return " ".join(text.split())[:limit]
