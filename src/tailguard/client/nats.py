"""Clients of ``tailguard serve --nats``: the binary protocol over NATS request-reply.

    from tailguard.client.nats import NatsClient

    with NatsClient("nats://10.0.0.5:4222", "tailguard.trading.predict") as client:
        r = client.predict("AAPL", {"bid": 99.99, "ask": 100.01}, budget_us=2_000)
        r.outputs["p_up"], r.rung, r.model_version, r.endpoint

    async with AsyncNatsClient("nats://10.0.0.5:4222", "tailguard.trading.predict") as client:
        b = await client.predict_batch(["AAPL", "MSFT"], {"bid": [1.0, 2.0], "ask": [1.1, 2.1]})

Every replica subscribes to the subject in one queue group, so the NATS server picks the
replica: there is no endpoint list, no pool and no hedging here (docs/protocol.md, "NATS").
A request is the same msgpack ``Request`` as on TCP, without the length prefix; the reply the
same ``Reply``.  The first call sends ``Hello`` to learn the service's outputs, rungs and
priorities (``Welcome``), which name the fields of ``Result`` / ``BatchResult``.

Timeouts and retries.  Each attempt waits ``timeout_s`` (given per call, else the budget plus
``timeout_margin_s``, else the client's ``timeout_s``).  No reply in that time (a replica
killed with the request, a partition) is ``Timeout`` — retried, with a fresh copy of the full
budget, when the request is idempotent and ``max_retries`` allows; status 20-29 (not
executed: draining, queue full...) is retried even when not idempotent, at once or after the
server's retry-after when that fits the attempt's time; 30-39 only when idempotent; 10-19 is
raised.  No member in the queue group ("no responders") is ``Unavailable`` at once.  Errors
are the ``tailguard.client`` tree (``ClientError``...).

``AsyncNatsClient`` belongs to the event loop it is used on.  ``NatsClient`` (blocking) runs
an ``AsyncNatsClient`` on a private event-loop thread and is thread-safe: calls from any
thread are handed to that loop.  Needs the ``nats`` extra (nats-py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

import msgspec

from tailguard.client._core import call_timeout, make_encoder
from tailguard.client._errors import (
    ClientError,
    ConnectFailed,
    ConnectionLost,
    InvalidRequest,
    ServerFailed,
    Timeout,
    Unavailable,
    error_from_reply,
)
from tailguard.client._result import BatchResult, Result, batch_result, single_result
from tailguard.schema.frames import client_decoder
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

__all__ = ["DEADLINE_HEADER", "AsyncNatsClient", "NatsClient"]

T = TypeVar("T")

#: The request header carrying an absolute deadline (Unix µs); see ``send_deadline``.
DEADLINE_HEADER = "Tailguard-Deadline"
_DRAINING = int(Status.DRAINING)


class AsyncNatsClient:
    """An asyncio client of one service's NATS subject (see the module docstring).

    ``url``: the NATS server(s) (a URL or a list).  ``subject``: the service's request subject
    (``tailguard.<service>.predict`` unless the servers were given ``--nats-subject``).
    ``timeout_s``: per attempt, for calls with neither ``timeout_s`` nor ``budget_us``.
    ``timeout_margin_s``: added to the budget for the attempt timeout.  ``max_retries``:
    re-sends per call.  ``send_deadline``: also send the absolute deadline (``Tailguard-Deadline``
    header, Unix µs), so a server answers EXPIRED a request that waited too long in NATS —
    only when the clocks of clients and servers are synchronised well below the budgets.
    ``connect_timeout_s``: connecting to NATS and the ``Hello`` round trip.  ``nc``: an already
    connected ``nats.aio.client.Client`` to use (not closed by ``close``).
    """

    def __init__(
        self,
        url: str | list[str],
        subject: str,
        *,
        timeout_s: float = 1.0,
        timeout_margin_s: float = 0.02,
        max_retries: int = 2,
        send_deadline: bool = False,
        connect_timeout_s: float = 2.0,
        client_id: str = "",
        nc: Any = None,
    ) -> None:
        if max_retries < 0 or not (timeout_s > 0 and timeout_margin_s >= 0 and connect_timeout_s > 0):
            raise ValueError("need max_retries >= 0, timeout_s > 0, timeout_margin_s >= 0 and "
                             "connect_timeout_s > 0")
        self.url = url
        self.subject = subject
        self.timeout_s = timeout_s
        self.timeout_margin_s = timeout_margin_s
        self.max_retries = max_retries
        self.send_deadline = send_deadline
        self.connect_timeout_s = connect_timeout_s
        self.client_id = client_id
        self.endpoint = f"nats:{subject}"
        self._nc = nc
        self._own_nc = nc is None
        self._welcome: Welcome | None = None
        self._ids = itertools.count(1)
        self._encode = make_encoder().encode
        self._decode = client_decoder().decode
        self.counts = {"requests": 0, "retries": 0, "timeouts": 0, "no_responders": 0, "nats_errors": 0}
        self.errors: dict[str, int] = {}

    # -- connection ------------------------------------------------------------------------------
    async def connect(self) -> Welcome:
        """Connect to NATS (if not yet) and fetch the service's ``Welcome`` (once).  Raises
        ``ConnectFailed`` (NATS unreachable, or the server refused the ``Hello``) or
        ``Unavailable`` (no server subscribed to the subject)."""
        if self._welcome is not None:
            return self._welcome
        nc = await self._connection()
        hello = self._encode(Hello(MAGIC, list(PROTOCOL_VERSIONS), self.client_id))
        for retries_left in range(self.max_retries, -1, -1):
            try:
                msg = await self._request(nc, hello, self.connect_timeout_s, None, "the Hello")
                break
            except Timeout:  # the replica it reached may have died: the group picks another
                self.counts["timeouts"] += 1
                if not retries_left:
                    raise
        try:
            got = self._decode(msg.data)
        except msgspec.DecodeError as exc:
            raise ConnectFailed(f"{self.endpoint}: undecodable answer to Hello: {exc}",
                                endpoint=self.endpoint) from exc
        if isinstance(got, Refused):
            raise ConnectFailed(f"{self.endpoint} refused the handshake: {got.error}",
                                status=_status(got.status), endpoint=self.endpoint)
        if not isinstance(got, Welcome):
            raise ConnectFailed(f"{self.endpoint}: expected Welcome, got {type(got).__name__}",
                                endpoint=self.endpoint)
        self._welcome = got
        return got

    async def _connection(self) -> Any:
        if self._nc is not None:
            return self._nc
        try:
            import nats
            import nats.errors
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConnectFailed("NatsClient needs nats-py: pip install 'tailguard[nats]'") from exc
        try:
            # Reconnects never stop once connected; the first connect is bounded here (nats-py
            # would otherwise retry an unreachable server for as long as it reconnects).
            self._nc = await asyncio.wait_for(
                nats.connect(self.url, connect_timeout=max(1, round(self.connect_timeout_s)),
                             max_reconnect_attempts=-1, reconnect_time_wait=0.2, allow_reconnect=True,
                             error_cb=self._nats_error),
                self.connect_timeout_s)
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            raise ConnectFailed(f"cannot connect to NATS at {self.url}: {exc or type(exc).__name__}",
                                endpoint=self.endpoint) from exc
        return self._nc

    async def _nats_error(self, exc: Exception) -> None:
        # nats-py reports connect failures, disconnects and reconnects here (it would print
        # them otherwise); counted, the calls see their own errors.
        self.counts["nats_errors"] += 1

    async def _request(self, nc: Any, payload: bytes, timeout_s: float, headers: dict[str, str] | None,
                       what: str) -> Any:
        """One NATS request; NATS errors mapped to the client tree."""
        import nats.errors

        try:
            return await nc.request(self.subject, payload, timeout=timeout_s, headers=headers)
        except nats.errors.NoRespondersError as exc:
            self.counts["no_responders"] += 1
            raise Unavailable(f"no server is subscribed to {self.subject!r} (no responders)") from exc
        except nats.errors.TimeoutError as exc:
            raise Timeout(f"no reply to {what} on {self.subject!r} within {timeout_s:.6g} s") from exc
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError) as exc:
            raise Unavailable(f"the NATS connection is closed: {exc}") from exc
        except (nats.errors.Error, OSError) as exc:
            err = ConnectionLost(f"NATS request on {self.subject!r} failed: {exc}", endpoint=self.endpoint)
            raise err from exc

    async def welcome(self) -> Welcome:
        """The service's ``Welcome`` (connecting first if needed)."""
        return await self.connect()

    async def ping(self, timeout_s: float = 1.0) -> Pong:
        """Send ``Ping``: one replica's state (``ready``/``draining``) and queue depth."""
        nc = await self._connection()
        msg = await self._request(nc, self._encode(Ping(next(self._ids))), timeout_s, None, "Ping")
        got = self._decode(msg.data)
        if not isinstance(got, Pong):
            raise ServerFailed(f"expected Pong, got {type(got).__name__}", endpoint=self.endpoint)
        return got

    async def close(self) -> None:
        """Close the NATS connection (unless it was given to the constructor)."""
        nc, self._nc = self._nc, None
        if nc is not None and self._own_nc and not nc.is_closed:
            await nc.close()

    async def __aenter__(self) -> AsyncNatsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- calls -----------------------------------------------------------------------------------
    async def predict(
        self, keys: Any, context: Mapping[str, Any] | None = None, *, priority: str | None = None,
        budget_us: int | None = None, timeout_s: float | None = None, idempotent: bool = True,
        traceparent: str = "",
    ) -> Result:
        """One decision for entity ``keys`` with request-time ``context``; the arguments are
        those of ``tailguard.client.Client.predict``.  Raises a ``ClientError``."""
        start = time.perf_counter_ns()
        reply, attempts = await self._call(keys, context, False, priority, budget_us, timeout_s, idempotent,
                                           traceparent)
        assert self._welcome is not None
        return single_result(reply, self._welcome, self.endpoint, False, False, attempts,
                             (time.perf_counter_ns() - start) / 1e9)

    async def predict_batch(
        self, keys: Any, context: Mapping[str, Any] | None = None, *, priority: str | None = None,
        budget_us: int | None = None, timeout_s: float | None = None, idempotent: bool = True,
        traceparent: str = "",
    ) -> BatchResult:
        """Decisions for a sequence of keys (or ``{entity: [keys]}``); as ``predict`` otherwise."""
        start = time.perf_counter_ns()
        reply, attempts = await self._call(keys, context, True, priority, budget_us, timeout_s, idempotent,
                                           traceparent)
        assert self._welcome is not None
        return batch_result(reply, self._welcome, self.endpoint, False, False, attempts,
                            (time.perf_counter_ns() - start) / 1e9)

    async def _call(self, keys: Any, context: Mapping[str, Any] | None, batch: bool, priority: str | None,
                    budget_us: int | None, timeout_s: float | None, idempotent: bool,
                    traceparent: str) -> tuple[Reply, int]:
        self.counts["requests"] += 1
        try:
            timeout_s = call_timeout(budget_us, timeout_s, self.timeout_s, self.timeout_margin_s)
            if self._welcome is None:
                await self.connect()
            nc = self._nc
            ctx = context if context is None or type(context) is dict else dict(context)
            req = Request(next(self._ids), keys, ctx, priority or "", budget_us or 0, self.client_id, batch,
                          "", "", idempotent, traceparent)
            try:
                payload = self._encode(req)
            except (TypeError, msgspec.EncodeError) as exc:
                raise InvalidRequest(f"cannot encode the request: {exc}",
                                     status=Status.INVALID_REQUEST) from exc
            return await self._attempts(nc, payload, timeout_s, budget_us or 0, idempotent)
        except ClientError as exc:
            self.errors[exc.code] = self.errors.get(exc.code, 0) + 1
            raise

    async def _attempts(self, nc: Any, payload: bytes, timeout_s: float, budget_us: int,
                        idempotent: bool) -> tuple[Reply, int]:
        retries = self.max_retries
        attempts = 0
        while True:
            attempts += 1
            headers = None
            if self.send_deadline and budget_us:
                headers = {DEADLINE_HEADER: str(time.time_ns() // 1000 + budget_us)}
            try:
                msg = await self._request(nc, payload, timeout_s, headers, "the request")
            except Timeout:
                self.counts["timeouts"] += 1
                if idempotent and retries > 0:  # the replica may be gone: the queue group picks another
                    retries -= 1
                    self.counts["retries"] += 1
                    continue
                raise
            except ConnectionLost:
                if idempotent and retries > 0:
                    retries -= 1
                    self.counts["retries"] += 1
                    continue
                raise
            try:
                reply = self._decode(msg.data)
            except msgspec.DecodeError as exc:
                raise ServerFailed(f"undecodable reply: {exc}", status=Status.MALFORMED,
                                   endpoint=self.endpoint) from exc
            if not isinstance(reply, Reply):
                raise ServerFailed(f"expected Reply, got {type(reply).__name__}", endpoint=self.endpoint)
            n = reply.status
            if n < 10:
                return reply, attempts
            err = error_from_reply(reply, self.endpoint)
            if n < 20 or n >= 40 or retries <= 0 or (n >= 30 and not idempotent):
                raise err
            if 20 <= n < 30 and n != _DRAINING and reply.retry_after_us:
                wait_s = reply.retry_after_us / 1e6
                if wait_s >= timeout_s:
                    raise err
                await asyncio.sleep(wait_s)
            retries -= 1
            self.counts["retries"] += 1

    def statistics(self) -> dict[str, Any]:
        """Counters (requests, retries, timeouts, no_responders, nats_errors: asynchronous
        errors nats-py reported, e.g. disconnects) and ``errors`` raised by code."""
        return {**self.counts, "errors": dict(self.errors)}


def _status(number: int) -> Status | None:
    try:
        return Status(number)
    except ValueError:
        return None


class NatsClient:
    """A blocking, thread-safe client of one service's NATS subject.

    The arguments are those of ``AsyncNatsClient``.  The client runs its NATS connection on a
    private event-loop thread (started here, stopped by ``close``); each call is handed to it
    and waited for, so a call costs one cross-thread hand-off each way besides the request.
    """

    def __init__(self, url: str | list[str], subject: str, **options: Any) -> None:
        self._async = AsyncNatsClient(url, subject, **options)
        self._loop = _new_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tailguard-nats-client",
                                        daemon=True)
        self._thread.start()
        self._closed = False

    @property
    def subject(self) -> str:
        """The request subject."""
        return self._async.subject

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise Unavailable("the client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def connect(self) -> Welcome:
        """Connect and fetch the service's ``Welcome`` now (else the first call does)."""
        return self._run(self._async.connect())

    def welcome(self) -> Welcome:
        """The service's ``Welcome``."""
        return self._run(self._async.welcome())

    def ping(self, timeout_s: float = 1.0) -> Pong:
        """One replica's ``Pong`` (state and queue depth)."""
        return self._run(self._async.ping(timeout_s))

    def predict(
        self, keys: Any, context: Mapping[str, Any] | None = None, *, priority: str | None = None,
        budget_us: int | None = None, timeout_s: float | None = None, idempotent: bool = True,
        traceparent: str = "",
    ) -> Result:
        """One decision; the arguments and errors are those of ``tailguard.client.Client.predict``.
        Blocks the calling thread."""
        return self._run(self._async.predict(keys, context, priority=priority, budget_us=budget_us,
                                             timeout_s=timeout_s, idempotent=idempotent,
                                             traceparent=traceparent))

    def predict_batch(
        self, keys: Any, context: Mapping[str, Any] | None = None, *, priority: str | None = None,
        budget_us: int | None = None, timeout_s: float | None = None, idempotent: bool = True,
        traceparent: str = "",
    ) -> BatchResult:
        """Decisions for many keys; as ``predict`` otherwise."""
        return self._run(self._async.predict_batch(keys, context, priority=priority, budget_us=budget_us,
                                                   timeout_s=timeout_s, idempotent=idempotent,
                                                   traceparent=traceparent))

    def statistics(self) -> dict[str, Any]:
        """The counters of ``AsyncNatsClient.statistics``."""
        return self._async.statistics()

    def close(self) -> None:
        """Close the connection and stop the loop thread (idempotent)."""
        if self._closed:
            return
        # Closing a broken connection may fail: nothing is left to release but the thread.
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._async.close(), self._loop).result(5)
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> NatsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (fewer µs per hand-off), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop
