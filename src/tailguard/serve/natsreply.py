"""The binary protocol over NATS request-reply: one queue-group subscription per worker.

``tailguard serve SERVICE --nats nats://HOST:PORT`` makes every worker subscribe to
``tailguard.<service>.predict`` (``--nats-subject``) in the queue group ``<service>``
(``--nats-queue``): the NATS server hands each request to one member of the group, so
replicas on many hosts share the load with no router of our own, and a replica that dies or
drains simply stops getting requests.

A message's payload is one binary-protocol message (docs/protocol.md) *without* the 4-byte
length prefix (NATS frames messages itself), decoded by the same msgspec decoder as TCP:

- ``Request`` goes to ``Dispatcher.submit`` exactly as a TCP frame does (admission, priority
  classes, deadlines, micro-batching, the ladder); its ``Reply`` is published to the
  message's reply subject, encoded as on TCP (again without the prefix);
- ``Hello`` is answered with ``Welcome`` (or ``Refused``): how a client learns the outputs,
  rungs and priorities without a connection of its own; ``Ping`` with ``Pong``;
- a payload that does not decode gets a ``Reply`` with MALFORMED / INVALID_REQUEST (id 0, or
  the request's id when it can be read), and the server keeps serving.

The budget travels in ``Request.budget_us`` as on TCP, counted from the moment this worker
takes the message.  A client whose clock is synchronised with the servers' may also send the
header ``Tailguard-Deadline`` (absolute Unix time in µs): a request past it is answered
EXPIRED at once, and one before it gets at most the time left as its budget (this covers the
time a message spent in NATS, which ``budget_us`` alone does not).

Draining (SIGTERM): ``App`` calls ``drain`` first, which unsubscribes (the NATS server stops
routing to this worker at once; messages it already sent are answered, DRAINING, so the
client retries elsewhere), then the dispatcher finishes what it holds and ``close`` flushes
the last replies and closes the connection.

Owner: the app's event loop thread.  Needs the ``nats`` extra (nats-py).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import msgspec

from tailguard.schema.frames import server_decoder
from tailguard.schema.wire import (
    MAGIC,
    PROTOCOL_VERSIONS,
    Hello,
    Ping,
    Pong,
    Refused,
    Reply,
    Request,
    Status,
    Welcome,
)
from tailguard.serve.problems import NatsUnavailable

if TYPE_CHECKING:
    from tailguard.serve.app import App

__all__ = ["DEADLINE_HEADER", "NatsReplier", "default_queue", "default_subject"]

#: Optional request header: the request's absolute deadline, Unix time in µs (needs clocks
#: synchronised between client and servers to mean anything).
DEADLINE_HEADER = "Tailguard-Deadline"
_replace = msgspec.structs.replace
#: Most messages admitted before the dispatcher runs a batch (bounds a burst's wait).
_MAX_BURST = 64


def default_subject(service: str) -> str:
    """The request subject a service is served on unless ``--nats-subject`` says otherwise."""
    return f"tailguard.{service}.predict"


def default_queue(service: str) -> str:
    """The queue group replicas of a service join unless ``--nats-queue`` says otherwise."""
    return service


class _ReplyTo:
    """The ``ReplySink`` of one NATS request: its reply subject.  ``deliver`` encodes into the
    replier's outbox; the replier publishes the outbox once per burst."""

    __slots__ = ("closed", "replier", "subject")

    def __init__(self, replier: NatsReplier, subject: str) -> None:
        self.replier = replier
        self.subject = subject
        self.closed = False  # NATS does not tell us when a requester gave up

    def deliver(self, reply: Any) -> None:
        self.replier.outbox.append((self.subject, self.replier.encode(reply)))

    def flush(self) -> None:
        self.replier.kick()


class NatsReplier:
    """One worker's NATS subscription, serving the binary protocol (see the module docstring)."""

    def __init__(self, app: App, url: str, subject: str | None = None, queue: str | None = None,
                 *, pending_msgs_limit: int = 65536, connect_timeout_s: float = 10.0) -> None:
        name = app.service.spec.name
        self.app = app
        self.url = url
        self.subject = subject or default_subject(name)
        self.queue = default_queue(name) if queue is None else queue
        self.pending_msgs_limit = pending_msgs_limit
        self.connect_timeout_s = connect_timeout_s
        self.dispatcher = app.dispatcher
        self._now = app.clock.now_ns
        self._decoder = server_decoder()
        self.encode = msgspec.msgpack.Encoder().encode
        #: (reply subject, payload) to publish at the end of the burst.
        self.outbox: list[tuple[str, bytes]] = []
        self._in_message = False
        self._kicked = False
        self._burst_n = 0  # messages admitted since the last flush
        self._burst_start = 0
        self._burst_b0 = 0
        self.nc: Any = None
        self.sub: Any = None
        self.closed = False
        # Counters (plain ints, read by statistics()).
        self.received = 0
        self.published = 0
        self.bad_payloads = 0
        self.expired = 0
        self.no_reply_subject = 0
        self.publish_errors = 0
        self.async_errors = 0

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect and subscribe in the queue group; returns once the NATS server has the
        subscription (so READY means requests can arrive)."""
        try:
            import nats
            import nats.errors
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError("--nats needs nats-py: pip install 'tailguard[nats]'") from exc
        name = f"tailguard-{self.app.service.spec.name}-{socket.gethostname()}-{os.getpid()}"
        try:
            # Reconnects never stop once connected; the first connect is bounded (nats-py would
            # retry an unreachable server forever): a replica that cannot join fails to start.
            self.nc = await asyncio.wait_for(
                nats.connect(self.url, name=name, error_cb=self._error, allow_reconnect=True,
                             max_reconnect_attempts=-1, reconnect_time_wait=0.2),
                self.connect_timeout_s)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            raise NatsUnavailable(f"cannot connect to NATS at {self.url} within "
                                  f"{self.connect_timeout_s:g} s: {exc or type(exc).__name__}") from exc
        self.sub = await self.nc.subscribe(self.subject, queue=self.queue, cb=self._on_message,
                                           pending_msgs_limit=self.pending_msgs_limit)
        await self.nc.flush()

    async def drain(self, timeout_s: float = 2.0) -> None:
        """Stop getting requests: unsubscribe (the queue group routes to the other members from
        the moment the NATS server reads it), then answer what was already delivered to this
        worker (the dispatcher is draining: DRAINING, so clients retry elsewhere)."""
        sub = self.sub
        if sub is None or self.nc is None or self.nc.is_closed:
            return
        try:
            # UNSUB, a round trip, then the messages already here; bounded, as NATS may be down.
            await asyncio.wait_for(sub.drain(), timeout_s)
        except Exception:
            self.async_errors += 1
        self.sub = None

    async def close(self) -> None:
        """Publish the last replies and close the connection (idempotent)."""
        if self.closed:
            return
        self.closed = True
        nc = self.nc
        if nc is None:
            return
        await self._publish()
        try:
            if not nc.is_closed:
                await nc.flush(timeout=2)
        except Exception:
            self.async_errors += 1
        finally:
            await nc.close()

    async def _error(self, exc: Exception) -> None:
        # nats-py reports slow consumers, reconnects and parse errors here; they are counted
        # (statistics) rather than logged from the loop.
        self.async_errors += 1

    # -- requests --------------------------------------------------------------------------------
    async def _on_message(self, msg: Any) -> None:
        # nats-py calls this once per message, in order, from one task, and goes straight on
        # to the next buffered message when this returns without suspending.  So a burst is
        # handled as a TCP read is: every message already here is admitted first, then the
        # dispatcher runs the first batch inline (knowing them all) and the replies go out.
        now = self._now()
        d = self.dispatcher
        if not self._burst_n:
            self._burst_start, self._burst_b0 = now, d.batch_ns
        self._burst_n += 1
        self.received += 1
        reply_to = msg.reply
        self._in_message = True
        try:
            if reply_to:
                self._handle(msg.data, msg.headers, reply_to, now)
            else:
                self.no_reply_subject += 1  # a publish, not a request: nobody to answer
            sub = self.sub
            if sub is not None and sub.pending_msgs and self._burst_n < _MAX_BURST:
                return  # more of this burst is already here
            d.flush()
        finally:
            self._in_message = False
        n, self._burst_n = self._burst_n, 0
        await self._publish()
        d.note_ingress(n, self._now() - self._burst_start - (d.batch_ns - self._burst_b0))

    def _handle(self, data: bytes, headers: dict[str, str] | None, reply_to: str, now: int) -> None:
        sink = _ReplyTo(self, reply_to)
        try:
            msg = self._decoder.decode(data)
        except msgspec.ValidationError as exc:
            self._bad(data, sink, Status.INVALID_REQUEST, str(exc))
            return
        except msgspec.DecodeError as exc:
            self._bad(data, sink, Status.MALFORMED, str(exc))
            return
        t = type(msg)
        if t is Request:
            req: Request = msg  # type: ignore[assignment]
            if headers:
                req_or_none = self._apply_deadline(req, headers.get(DEADLINE_HEADER), sink)
                if req_or_none is None:
                    return
                req = req_or_none
            self.dispatcher.submit(req, now, sink)
        elif t is Ping:
            sink.deliver(Pong(msg.id, self.app.state.value, self.dispatcher.in_flight))  # type: ignore[union-attr]
        elif t is Hello:
            self._hello(msg, sink)  # type: ignore[arg-type]
        else:  # pragma: no cover - the decoder yields only client messages
            self._bad(data, sink, Status.MALFORMED, "unexpected message")

    def _apply_deadline(self, req: Request, value: str | None, sink: _ReplyTo) -> Request | None:
        """The request with its budget cut to the header's deadline; None when it already
        passed (answered EXPIRED here, as the scheduler answers a request that expired)."""
        if not value:
            return req
        try:
            left_us = int(value) - time.time_ns() // 1000
        except ValueError:
            self._reply_error(sink, req.id, Status.INVALID_REQUEST,
                              f"{DEADLINE_HEADER} must be an integer (Unix time in µs)", DEADLINE_HEADER)
            return None
        if left_us <= 0:
            self.expired += 1
            self._reply_error(sink, req.id, Status.EXPIRED,
                              f"the deadline passed {-left_us} µs before the request was read")
            return None
        if req.budget_us and req.budget_us <= left_us:
            return req
        return _replace(req, budget_us=left_us)

    def _hello(self, hello: Hello, sink: _ReplyTo) -> None:
        if hello.magic != MAGIC:
            sink.deliver(Refused(int(Status.MALFORMED), "expected Hello with magic 'tailguard'"))
            return
        common = sorted(set(hello.versions) & set(PROTOCOL_VERSIONS))
        if not common:
            sink.deliver(Refused(int(Status.UNSUPPORTED_VERSION),
                                 f"no common protocol version: client {hello.versions}, "
                                 f"server {list(PROTOCOL_VERSIONS)}"))
            return
        w = self.app.welcome
        sink.deliver(Welcome(common[-1], w.server, w.service, w.max_frame, os.getpid(),
                             w.entities, w.context, w.outputs, w.rungs, w.priorities, w.model_version))

    def _bad(self, data: bytes, sink: _ReplyTo, status: Status, message: str) -> None:
        self.bad_payloads += 1
        self._reply_error(sink, _best_effort_id(data), status, message)

    def _reply_error(self, sink: _ReplyTo, req_id: int, status: Status, message: str,
                     field: str = "") -> None:
        self.dispatcher.count_error(status)
        sink.deliver(Reply(req_id, int(status), error=message, field=field))

    # -- replies ---------------------------------------------------------------------------------
    def kick(self) -> None:
        """Replies were delivered: publish them — at the end of the message being handled, or,
        when a loop callback delivered them (a later batch), from a task started now."""
        if self._in_message or self._kicked or not self.outbox:
            return
        self._kicked = True
        self.app.loop.create_task(self._publish())

    async def _publish(self) -> None:
        self._kicked = False
        out = self.outbox
        if not out:
            return
        self.outbox = []
        nc = self.nc
        if nc is None or nc.is_closed:
            self.publish_errors += len(out)
            return
        publish = nc.publish
        for subject, payload in out:
            # Does not suspend: nats-py appends to its pending buffer and wakes its flusher.
            try:
                await publish(subject, payload)
            except Exception:
                self.publish_errors += 1  # the requester times out (and retries if idempotent)
            else:
                self.published += 1

    def statistics(self) -> dict[str, Any]:
        """Counters: messages received, replies published, bad payloads, requests expired at
        the door (deadline header), messages without a reply subject, publish and
        asynchronous NATS errors; the subject and queue group."""
        return {
            "subject": self.subject,
            "queue": self.queue,
            "subscribed": self.sub is not None,
            "received": self.received,
            "published": self.published,
            "bad_payloads": self.bad_payloads,
            "expired": self.expired,
            "no_reply_subject": self.no_reply_subject,
            "publish_errors": self.publish_errors,
            "async_errors": self.async_errors,
        }


def _best_effort_id(data: bytes) -> int:
    """The request id of a payload the typed decoder refused, when it is an array whose second
    element is an integer (so the client can match the error to its request)."""
    try:
        obj = msgspec.msgpack.decode(data)
    except Exception:
        return 0
    if isinstance(obj, list) and len(obj) > 1 and isinstance(obj[1], int) and 0 <= obj[1] < 2**64:
        return obj[1]
    return 0
