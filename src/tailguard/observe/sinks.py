"""Alert sinks: a JSON log line, an HTTP POST (webhook), a NATS subject.

Every sink's ``send`` returns at once: the log sink writes one line through the standard
``logging`` module (logger ``tailguard.drift``: WARNING for alerts, INFO for clears); the
webhook and NATS sinks put the event on a bounded queue that their own thread delivers, so a
slow or dead receiver costs the side path nothing.  When the queue is full the event is
dropped and counted; a delivery that fails or times out is counted as failed.  Nothing is
ever raised into the caller.  ``close`` delivers what is still queued, each delivery bounded
by the sink's timeout.

Events travel as JSON objects (``AlertEvent`` fields; a NaN value is ``null``).

Owner: ``send``/``close``/``statistics`` on the side path's thread; deliveries on the sink's
own thread (the NATS sink runs an asyncio loop there, the nats-py client lives on it).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import msgspec

from tailguard.observe.alerts import AlertEvent, AlertSink
from tailguard.spec import DriftSinkSpec

__all__ = ["LogSink", "NatsSink", "WebhookSink", "build_sinks"]

_encode = msgspec.json.Encoder().encode


class LogSink:
    """One JSON line per event: to ``stream`` when given, else to the ``tailguard.drift`` logger."""

    def __init__(self, stream: TextIO | None = None, logger: logging.Logger | None = None) -> None:
        self.stream = stream
        self.logger = logger or logging.getLogger("tailguard.drift")
        self.sent = 0
        self.failed = 0

    def send(self, event: AlertEvent) -> None:
        """Write the event as one JSON line."""
        line = _encode(event).decode()
        try:
            if self.stream is not None:
                self.stream.write(line + "\n")
                self.stream.flush()
            else:
                self.logger.log(logging.WARNING if event.state == "alert" else logging.INFO, line)
            self.sent += 1
        except Exception:  # a closed stream must not stop the side path
            self.failed += 1

    def close(self) -> None:
        """Nothing is held (lines are written as they come)."""

    def statistics(self) -> dict[str, Any]:
        """Lines written and failed writes."""
        return {"sent": self.sent, "failed": self.failed, "dropped": 0}


class _QueuedSink:
    """A bounded queue drained by one delivery thread; subclasses implement ``_deliver``."""

    def __init__(self, name: str, timeout_s: float, queue_size: int) -> None:
        self.timeout_s = timeout_s
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=queue_size)
        self.sent = 0  # written by the delivery thread only
        self.failed = 0
        self.dropped = 0  # written by the sending thread only
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def send(self, event: AlertEvent) -> None:
        """Queue the event (dropped and counted when the queue is full or the sink closed)."""
        if self._closed:
            self.dropped += 1
            return
        try:
            self._queue.put_nowait(_encode(event))
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            body = self._queue.get()
            if body is None:
                return
            try:
                self._deliver(body)
                self.sent += 1
            except Exception:
                self.failed += 1

    def _deliver(self, body: bytes) -> None:
        raise RuntimeError("a queued sink implements _deliver")

    def close(self) -> None:
        """Deliver what is queued (each delivery within the timeout), then stop the thread."""
        if self._closed:
            return
        self._closed = True
        wait_s = self.timeout_s * (self._queue.qsize() + 2)
        try:
            self._queue.put(None, timeout=wait_s)
        except queue.Full:
            return  # the thread is stuck past its timeouts; it is a daemon and dies with us
        self._thread.join(wait_s)

    def statistics(self) -> dict[str, Any]:
        """Events delivered, failed deliveries, events dropped on a full queue, events queued."""
        return {"sent": self.sent, "failed": self.failed, "dropped": self.dropped,
                "queued": self._queue.qsize()}


class WebhookSink(_QueuedSink):
    """POST each event as JSON to ``url`` (any 2xx answer is a delivery)."""

    def __init__(self, url: str, *, timeout_s: float = 2.0, queue_size: int = 1000,
                 headers: Mapping[str, str] | None = None) -> None:
        self.url = url
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        super().__init__("tailguard-drift-webhook", timeout_s, queue_size)

    def _deliver(self, body: bytes) -> None:
        req = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # 4xx/5xx raise
            resp.read()


class NatsSink:
    """Publish each event to ``subject`` on the NATS server at ``url`` (nats-py, the ``nats``
    extra).  The client lives on the sink's own asyncio loop: it connects on the first event
    and stays connected; a failed connect or publish is counted and the next event connects
    again."""

    def __init__(self, url: str, subject: str, *, timeout_s: float = 2.0, queue_size: int = 1000) -> None:
        self.url = url
        self.subject = subject
        self.timeout_s = timeout_s
        self.queue_size = queue_size
        self.sent = 0  # written on the loop thread only
        self.failed = 0
        self.dropped = 0  # written by the sending thread only
        self._queued = 0
        self._lock = threading.Lock()
        self._closed = False
        self._nc: Any = None
        self._loop = asyncio.new_event_loop()
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._thread = threading.Thread(target=self._main, name="tailguard-drift-nats", daemon=True)
        self._thread.start()

    def send(self, event: AlertEvent) -> None:
        """Queue the event (dropped and counted when ``queue_size`` are waiting or the sink closed)."""
        with self._lock:
            if self._closed or self._queued >= self.queue_size:
                self.dropped += 1
                return
            self._queued += 1
        self._loop.call_soon_threadsafe(self._inbox.put_nowait, _encode(event))

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._consume())
        finally:
            self._loop.close()

    async def _consume(self) -> None:
        while True:
            body = await self._inbox.get()
            if body is None:
                break
            try:
                await asyncio.wait_for(self._publish(body), self.timeout_s)
                self.sent += 1
            except Exception:
                self.failed += 1
                await self._drop_connection()
            finally:
                with self._lock:
                    self._queued -= 1
        await self._drop_connection()

    async def _publish(self, body: bytes) -> None:
        if self._nc is None or self._nc.is_closed:
            import nats

            async def quiet(exc: Exception) -> None:  # errors surface as failed deliveries
                return None

            # One attempt, no wait between attempts: a refused connect fails now (counted), where
            # nats-py's defaults would retry it for the whole timeout.
            self._nc = await nats.connect(self.url, connect_timeout=self.timeout_s, allow_reconnect=False,
                                          max_reconnect_attempts=1, reconnect_time_wait=0,
                                          error_cb=quiet, name="tailguard-drift")
        await self._nc.publish(self.subject, body)
        await self._nc.flush(timeout=self.timeout_s)

    async def _drop_connection(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.close(), self.timeout_s)
            except Exception:
                return

    def close(self) -> None:
        """Publish what is queued (each within the timeout), disconnect, stop the loop thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            waiting = self._queued
        self._loop.call_soon_threadsafe(self._inbox.put_nowait, None)
        self._thread.join(self.timeout_s * (waiting + 2))

    def statistics(self) -> dict[str, Any]:
        """Events published, failed publishes, events dropped on a full queue, events queued."""
        return {"sent": self.sent, "failed": self.failed, "dropped": self.dropped, "queued": self._queued}


def build_sinks(specs: Sequence[DriftSinkSpec], service: str) -> list[AlertSink]:
    """The sinks a ``[drift]`` section declares (NATS subject default: ``tailguard.drift.<service>``)."""
    sinks: list[AlertSink] = []
    for s in specs:
        if s.kind == "log":
            sinks.append(LogSink())
        elif s.kind == "webhook":
            assert s.url is not None
            sinks.append(WebhookSink(s.url, timeout_s=s.timeout, queue_size=s.queue_size, headers=s.headers))
        else:
            assert s.url is not None
            sinks.append(NatsSink(s.url, s.subject or f"tailguard.drift.{service}", timeout_s=s.timeout,
                                  queue_size=s.queue_size))
    return sinks
