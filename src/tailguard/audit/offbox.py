"""The off-box copy of an audit log: ship its entries to NATS JetStream (``tailguard audit
ship``, ``tailguard serve --audit-nats``); ``tailguard.audit.pull`` rebuilds the files.

The shipper tails the segment files, it is not fed by the writer: the files already are a
durable queue that never blocks the writer and never drops, so an outage of any length only
delays the copy, and a restart resumes from the stream itself.  Each message carries one or
more consecutive *complete* entries, byte for byte as on disk (``len | payload | mac``), so
the rebuilt copy verifies with the same key; the shipper needs no key.  Subject
``tailguard.audit.<service>.<worker>``; headers (``Tailguard-*``): the segment number, the
byte offset of the first entry, the index of the first entry in its segment and the entry
count; ``Nats-Msg-Id`` is ``service/worker/segment/entry`` (JetStream drops a re-sent copy).

Resuming: after every (re)connect the shipper reads the stream's last message on its subject,
checks that those bytes are the local file's bytes at that position (else another log was
shipped under this subject: a fatal ``OffboxError``), and continues right after it.  Messages
are published one at a time and each waits for its acknowledgement, so the stream never
holds a later message without every earlier one: nothing is lost or stored twice.

Thread ownership: ``start`` runs the shipper on its own thread with its own asyncio loop
(nats-py); ``flush``, ``close`` and ``statistics`` are called from the owner thread.
``drain`` (the side-path contract) has nothing to do: the shipper thread polls the files.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from tailguard.audit.format import segment_name
from tailguard.audit.offbox_layout import (
    AUDIT_SUBJECTS,
    DEFAULT_STREAM,
    H_ENTRIES,
    H_ENTRY,
    H_OFFSET,
    H_SEGMENT,
    OffboxError,
    Position,
    entries_at,
    read_exact,
    segment_numbers,
    service_of,
    subject_for,
)

__all__ = ["DEFAULT_STREAM", "AuditShipper", "OffboxError", "StreamLimits", "connect", "ensure_stream"]

#: What a lost connection, a refused connect or a missing acknowledgement raise.
NATS_FAILURES = (nats.errors.Error, OSError, asyncio.TimeoutError)


@dataclass(frozen=True)
class StreamLimits:
    """Limits of the stream when the shipper creates it (an existing stream is used as it
    is: create it yourself for other limits or replicas).  ``max_bytes``: the whole stream
    (the server refuses more than its JetStream store allows);
    ``max_age_s``: 0 keeps messages forever (retention is the local log's business);
    ``max_msg_bytes``: one message (keep it under the server's ``max_payload``, 1 MiB by
    default); ``duplicate_window_s``: how long JetStream remembers message ids.  When full
    the stream refuses new messages (discard new): an audit copy never loses old entries
    silently; the shipper reports the refusal and the local log keeps everything."""

    max_bytes: int = 1 << 30
    max_age_s: float = 0.0
    max_msg_bytes: int = 1 << 20
    duplicate_window_s: float = 120.0
    replicas: int = 1


async def connect(url: str, connect_timeout_s: float = 2.0) -> NatsClient:
    """A NATS connection that does not reconnect by itself (callers resynchronise instead)."""

    async def quiet(*_: Any) -> None:
        return None

    return await nats.connect(url, allow_reconnect=False, connect_timeout=max(1, round(connect_timeout_s)),
                              max_reconnect_attempts=0, error_cb=quiet, disconnected_cb=quiet,
                              closed_cb=quiet, name="tailguard-audit")


async def ensure_stream(js: JetStreamContext, name: str, limits: StreamLimits) -> None:
    """Create stream ``name`` (file storage, ``tailguard.audit.>``, ``limits``) if missing."""
    try:
        await js.stream_info(name)
        return
    except nats.js.errors.NotFoundError:
        cfg = StreamConfig(name=name, subjects=[AUDIT_SUBJECTS], storage=StorageType.FILE,
                           retention=RetentionPolicy.LIMITS, discard=DiscardPolicy.NEW,
                           max_bytes=limits.max_bytes, max_age=limits.max_age_s,
                           max_msg_size=limits.max_msg_bytes, duplicate_window=limits.duplicate_window_s,
                           num_replicas=limits.replicas)
    await js.add_stream(cfg)


class AuditShipper:
    """Copy the audit log in ``directory`` to JetStream stream ``stream`` at ``nats_url``.

    ``service`` defaults to the log's header, ``worker`` to the directory's name (the
    server's per-worker directories are named by pid).  ``max_message_bytes``: entries per
    message up to this size (a larger entry goes alone).  ``poll_interval_s``: how often the
    files are checked for new entries.  ``ack_timeout_s``: wait for an acknowledgement;
    ``backoff_s``/``max_backoff_s``: pause after a failure, doubling up to the maximum.
    """

    def __init__(self, directory: str | Path, nats_url: str, *, service: str | None = None,
                 worker: str | None = None, stream: str = DEFAULT_STREAM,
                 limits: StreamLimits = StreamLimits(), max_message_bytes: int = 256 << 10,
                 poll_interval_s: float = 0.05, ack_timeout_s: float = 2.0, backoff_s: float = 0.1,
                 max_backoff_s: float = 2.0) -> None:
        self.directory = Path(directory)
        self.url = nats_url
        self.service = service
        self.worker = worker if worker is not None else self.directory.resolve().name
        self.stream = stream
        self.limits = limits
        self.max_message_bytes = min(max_message_bytes, limits.max_msg_bytes - 1024)
        self.poll_interval_s = poll_interval_s
        self.ack_timeout_s = ack_timeout_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.subject = "" if service is None else subject_for(service, self.worker)
        self._stop = threading.Event()
        self._acked = threading.Condition()
        self._position = Position()
        self._thread: threading.Thread | None = None
        self._max_payload = self.max_message_bytes
        self.messages = self.entries = self.bytes = self.duplicates = 0
        self.connects = self.failures = self.skipped_segments = 0
        self.connected = False
        self.last_error = ""
        self.fatal: OffboxError | None = None
        #: Whether ``close`` found everything on disk acknowledged.
        self.complete = False

    # -- owner thread ----------------------------------------------------------------------------
    def start(self) -> AuditShipper:
        """Start shipping on a new daemon thread (returns self)."""
        self._thread = threading.Thread(target=self._thread_main, daemon=True,
                                        name=f"tailguard-audit-ship-{self.worker}")
        self._thread.start()
        return self

    def drain(self, budget_ns: int | None = None) -> int:
        """Side-path contract: nothing runs on the owner thread (the shipper polls)."""
        return 0

    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until every complete entry now on disk is acknowledged
        (an entry whose end is not flushed yet is waited for).  False on timeout or fatal error."""
        target = self._disk_end()
        with self._acked:
            return self._acked.wait_for(lambda: self.fatal is not None or self._position >= target,
                                        timeout_s) and self.fatal is None

    def close(self, timeout_s: float = 5.0) -> None:
        """Ship what is on disk (waiting up to ``timeout_s``), then stop the thread.  Whatever
        is left stays in the files: the next shipper of this directory resumes from the stream."""
        if self._thread is not None:
            self.complete = self.flush(timeout_s)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.ack_timeout_s + 3.0)
            self._thread = None

    def statistics(self) -> dict[str, Any]:
        """Counters of what was acknowledged, the acknowledged position, connection state."""
        pos = self._position
        return {"subject": self.subject, "stream": self.stream, "messages": self.messages,
                "entries": self.entries, "bytes": self.bytes, "duplicates": self.duplicates,
                "connects": self.connects, "failures": self.failures, "connected": self.connected,
                "skipped_segments": self.skipped_segments,
                "segment": pos.segment, "offset": pos.offset, "last_error": self.last_error,
                "fatal": None if self.fatal is None else str(self.fatal)}

    # -- shipper thread --------------------------------------------------------------------------
    def _thread_main(self) -> None:
        with contextlib.suppress(OffboxError):  # kept in self.fatal, shown by statistics()
            asyncio.run(self.run(follow=True))

    async def run(self, *, follow: bool) -> None:
        """Ship until stopped (``follow``) or until caught up with the files (else); on the
        calling loop.  Raises ``OffboxError`` when shipping cannot go on (not when NATS is
        down: that is retried with backoff)."""
        backoff = self.backoff_s
        try:
            while not self._stop.is_set():
                try:
                    await self._session(follow)
                    return
                except NATS_FAILURES as exc:
                    self.failures += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                await self._pause(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
        except OffboxError as exc:
            with self._acked:
                self.fatal = exc
                self._acked.notify_all()
            raise

    async def _session(self, follow: bool) -> None:
        if not self.subject:
            self.service = service_of(self.directory)
            self.subject = subject_for(self.service, self.worker)
        nc = await connect(self.url)
        try:
            self.connected = True
            self.connects += 1
            js = nc.jetstream(timeout=self.ack_timeout_s)
            self._max_payload = nc.max_payload - 1024  # room for the headers
            await ensure_stream(js, self.stream, self.limits)
            self._set_position(await self._resync(js))
            await self._pump(js, follow)
        finally:
            self.connected = False
            await _quietly(nc.close)

    async def _resync(self, js: JetStreamContext) -> Position:
        try:
            last = await js.get_last_msg(self.stream, self.subject)
        except nats.js.errors.NotFoundError:
            return Position()
        h = last.headers or {}
        try:
            seg, off, entry, n = (int(h[k]) for k in (H_SEGMENT, H_OFFSET, H_ENTRY, H_ENTRIES))
        except (KeyError, ValueError):
            raise OffboxError(f"the last message of {self.subject} in {self.stream} is not an audit "
                              "message") from None
        data = last.data or b""
        path = self.directory / segment_name(seg)
        if not path.exists() and any(k > seg for k in segment_numbers(self.directory)):
            self.skipped_segments += 1  # cut by retention after it was shipped: go on after it
            return Position(seg + 1, 0, 0)
        if read_exact(self.directory / segment_name(seg), off, len(data)) != data:
            raise OffboxError(f"the stream {self.stream} holds a different log under {self.subject} "
                              f"(segment {seg} at byte {off} differs from {self.directory})")
        return Position(seg, off + len(data), entry + n)

    async def _pump(self, js: JetStreamContext, follow: bool) -> None:
        assert self.service is not None
        prefix = f"{self.service}/{self.worker}"
        while True:
            pos = self._position
            path = self.directory / segment_name(pos.segment)
            # Seen before reading: the writer completes a segment before creating the next.
            newer = (self.directory / segment_name(pos.segment + 1)).exists()
            data, n = entries_at(path, pos.offset, min(self.max_message_bytes, self._max_payload))
            if len(data) > self._max_payload:
                raise OffboxError(f"{path.name}: entry {pos.entry} has {len(data)} bytes, more than a "
                                  f"NATS message may carry here ({self._max_payload}); raise max_payload")
            if n:
                headers = {"Nats-Msg-Id": f"{prefix}/{pos.segment}/{pos.entry}", H_SEGMENT: str(pos.segment),
                           H_OFFSET: str(pos.offset), H_ENTRY: str(pos.entry), H_ENTRIES: str(n)}
                ack = await js.publish(self.subject, data, timeout=self.ack_timeout_s, stream=self.stream,
                                       headers=headers)
                self.messages += 1
                self.entries += n
                self.bytes += len(data)
                self.duplicates += bool(ack.duplicate)
                self._set_position(Position(pos.segment, pos.offset + len(data), pos.entry + n))
            elif newer:
                self._set_position(Position(pos.segment + 1, 0, 0))
            elif not path.exists() and (later := [k for k in segment_numbers(self.directory)
                                                  if k > pos.segment]):
                # Cut by retention before it was shipped: the copy starts again at the next one.
                self.skipped_segments += later[0] - pos.segment
                self._set_position(Position(later[0], 0, 0))
            elif not follow or self._stop.is_set():
                return
            else:
                await self._pause(self.poll_interval_s)

    # -- helpers ---------------------------------------------------------------------------------
    def _set_position(self, pos: Position) -> None:
        with self._acked:
            self._position = pos
            self._acked.notify_all()

    def _disk_end(self) -> Position:
        numbers = segment_numbers(self.directory)
        if not numbers:
            return Position()
        return Position(numbers[-1], (self.directory / segment_name(numbers[-1])).stat().st_size)

    async def _pause(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stop.is_set() and (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.05))


async def _quietly(fn: Callable[[], Awaitable[Any]]) -> None:
    try:
        await fn()
    except NATS_FAILURES:
        return
