"""The Redis online store and its near-cached front for an asyncio loop (same semantics as the blocking ones).

``AsyncRedisOnlineStore`` reads with the same pipelined ``HMGET`` wire as the blocking store
(``replies.HmgetReplies`` over asyncio streams, a small pool of connections so concurrent reads
on one loop do not queue behind each other) and writes with ``redis.asyncio``.  Errors are
translated exactly as in ``redis``: ``FeatureStoreUnavailable`` for timeouts and unreachable
servers, ``FeatureStoreError`` for error replies.  ``timeout_s`` bounds a whole read.

``AsyncNearCachedStore`` is ``NearCachedStore`` with an awaited fetch; its invalidation
listener still runs on its own thread (a push applies to the cache without waiting for the
loop).  Everything else is owned by the loop that calls it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tailguard.clock import Clock
from tailguard.features.online.errors import FeatureStoreError, FeatureStoreUnavailable
from tailguard.features.online.front import NearCachedBase
from tailguard.features.online.protocol import Rows, ViewSet
from tailguard.features.online.redis import StoreCore, translate_error
from tailguard.features.online.replies import Fetched, HmgetReplies, Replies
from tailguard.features.online.wire import RECV_BYTES, handshake
from tailguard.features.view import FeatureView
from tailguard.spec import EntitySpec

__all__ = ["AsyncNearCachedStore", "AsyncRedisOnlineStore"]


class _Stream:
    """One asyncio connection of the read pool."""

    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer


class AsyncRedisOnlineStore(StoreCore):
    """The Redis online store for asyncio (see the module docstring); owned by one event loop."""

    def __init__(
        self,
        views: Mapping[str, FeatureView],
        entities: Iterable[EntitySpec],
        *,
        service: str,
        url: str = "redis://127.0.0.1:6379/0",
        timeout_s: float = 0.1,
        connect_timeout_s: float = 0.1,
        client: redis.asyncio.Redis | None = None,
        clock: Clock | None = None,
        publish_invalidations: bool = True,
        namespace: str = "tg",
        max_idle: int = 8,
    ) -> None:
        super().__init__(
            views, entities, service=service, clock=clock,
            publish_invalidations=publish_invalidations, namespace=namespace,
        )
        self._own = client is None
        self.client: redis.asyncio.Redis = client or redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
        )
        kw = self.conn_kwargs = dict(self.client.connection_pool.connection_kwargs)
        self._hello, self._n_hello = handshake(kw.get("password"), kw.get("username"), int(kw.get("db") or 0))
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[_Stream] = []
        self._max_idle = max_idle

    async def _open(self) -> _Stream:
        path = self.conn_kwargs.get("path")
        async with asyncio.timeout(self._connect_timeout_s):
            if path:
                r, w = await asyncio.open_unix_connection(path)
            else:
                kw = self.conn_kwargs
                host, port = kw.get("host", "127.0.0.1"), int(kw.get("port", 6379))
                r, w = await asyncio.open_connection(host, port)
        return _Stream(r, w)

    async def send(self, views: ViewSet, payload: bytes, n: int) -> Fetched:
        """Send a packed batch of ``n`` HMGET commands of ``views`` and read the replies (one round trip).

        As in the blocking store, a pooled connection found closed is replaced and the read
        sent once more, on a fresh connection: the other idle connections were opened before
        the same failure, so they are closed rather than tried one by one.  Nothing else is
        retried.
        """
        self.reads += 1
        self.keys_read += n
        reused = bool(self._idle)
        try:
            return await self._send(views, payload, n)
        except FeatureStoreUnavailable as exc:
            if not reused or exc.reason != "unreachable":
                raise
            self._close_idle()
            self.errors -= 1  # counted again if the fresh connection fails too
            return await self._send(views, payload, n)

    async def fetch_values(self, views: ViewSet, hkeys: Sequence[bytes]) -> Fetched:
        """The replies for hash keys, as read (regular replies stay one numpy block)."""
        return await self.send(views, self.read_plan(views)[0].pack(hkeys), len(hkeys))

    async def fetch(self, views: ViewSet, hkeys: Sequence[bytes]) -> Replies:
        """Raw ``HMGET`` replies for hash keys (one list per key): one round trip whatever their number."""
        return (await self.fetch_values(views, hkeys)).lists()

    def _close_idle(self) -> None:
        for s in self._idle:
            s.writer.close()
        self._idle.clear()

    async def _send(self, views: ViewSet, payload: bytes, n: int) -> Fetched:
        stream: _Stream | None = None
        try:
            skip = 0
            if self._idle:
                stream = self._idle.pop()
            else:
                stream = await self._open()
                if self._n_hello:
                    payload, skip = self._hello + payload, self._n_hello
            replies = HmgetReplies(self.read_plan(views)[1], n, skip)
            async with asyncio.timeout(self._timeout_s):
                stream.writer.write(payload)
                while True:
                    data = await stream.reader.read(RECV_BYTES)
                    if not data:
                        raise ConnectionError("the server closed the connection")
                    if replies.feed(data):
                        break
        except BaseException as exc:
            if stream is not None:
                stream.writer.close()
            self.errors += 1
            if isinstance(exc, FeatureStoreError):
                raise
            if isinstance(exc, OSError | TimeoutError):
                raise translate_error(exc, "read") from exc
            raise
        if len(self._idle) < self._max_idle:
            self._idle.append(stream)
        else:
            stream.writer.close()
        return replies.result()

    async def read(self, views: ViewSet, key: Any, out: Rows | None = None) -> Rows:
        """One entity's values of ``views``: one ``HMGET``."""
        rows = out if out is not None else Rows.for_views(views)
        rows.reset(1)
        self.decode(views, await self.send(views, self.pack_keys(views, (key,)), 1), rows)
        return rows

    async def read_many(self, views: ViewSet, keys: Sequence[Any], out: Rows | None = None) -> Rows:
        """Many entities' values of ``views``: one pipelined round trip."""
        rows = out if out is not None else Rows.for_views(views, max(len(keys), 1))
        rows.reset(len(keys))
        if keys:
            self.decode(views, await self.send(views, self.pack_keys(views, keys), len(keys)), rows)
        return rows

    async def write(
        self,
        view: str | FeatureView,
        key: Any,
        values: Sequence[float] | np.ndarray,
        event_ns: int | None = None,
    ) -> None:
        """Write one entity's fields of ``view``."""
        await self.write_many(view, [key], np.asarray(values, dtype=np.float32).reshape(1, -1), event_ns)

    async def write_many(
        self,
        view: str | FeatureView,
        keys: Sequence[Any],
        values: np.ndarray,
        event_ns: np.ndarray | int | None = None,
    ) -> None:
        """Write many entities' rows of ``view`` in one pipelined round trip (then publish)."""
        pipe = self.client.pipeline(transaction=False)
        n = self.queue_write(pipe, view, keys, values, event_ns)
        if not n:
            return
        try:
            await pipe.execute()
        except redis.exceptions.RedisError as exc:
            self.errors += 1
            raise translate_error(exc, "write") from exc
        self.writes += n

    async def ping(self) -> None:
        """One ``PING`` round trip (raises ``FeatureStoreUnavailable`` when unreachable)."""
        try:
            await self.client.ping()
        except redis.exceptions.RedisError as exc:
            raise translate_error(exc, "ping") from exc

    async def aclose(self) -> None:
        """Close the read pool, and the client when this store created it."""
        self._close_idle()
        if self._own:
            await self.client.aclose()


class AsyncNearCachedStore(NearCachedBase[AsyncRedisOnlineStore]):
    """``AsyncOnlineStore``: ``AsyncRedisOnlineStore`` behind a near-cache (as ``NearCachedStore``).

    ``AsyncNearCachedStore(store, *, capacity=100_000, mode=TRACKING, clock=None,
    heartbeat_s=0.5, entry_ttl_s=60.0, start=True)``: the parameters of ``NearCachedStore``.
    """

    async def read(self, views: ViewSet, key: Any, out: Rows | None = None) -> Rows:
        """One entity: from the cache when it may serve it, else one ``HMGET``."""
        rows, hk, served = self.begin_read(views, key, out)
        if served:
            return rows
        return await self._fetch(views, [hk], [0], rows, self.cache.epoch, self._clock.now_ns())

    async def read_many(self, views: ViewSet, keys: Sequence[Any], out: Rows | None = None) -> Rows:
        """Many entities: cached ones from memory, the rest in one pipelined round trip."""
        rows, hkeys, miss, epoch, now = self.begin_read_many(views, keys, out)
        if not miss:
            return rows
        return await self._fetch(views, hkeys, miss, rows, epoch, now)

    async def _fetch(
        self, views: ViewSet, hkeys: list[bytes], miss: list[int], rows: Rows, epoch: int, now: int
    ) -> Rows:
        try:
            replies = await self.store.fetch_values(views, self.to_fetch(hkeys, miss))
        except FeatureStoreUnavailable as exc:
            raise self.front.fail(views, exc) from exc
        self.front.complete(views, hkeys, miss, replies, rows, epoch, now)
        return rows

    async def write(
        self,
        view: str | FeatureView,
        key: Any,
        values: Sequence[float] | np.ndarray,
        event_ns: int | None = None,
    ) -> None:
        """Write through to Redis, then drop the entity from this process's cache."""
        await self.write_many(view, [key], np.asarray(values, dtype=np.float32).reshape(1, -1), event_ns)

    async def write_many(
        self,
        view: str | FeatureView,
        keys: Sequence[Any],
        values: np.ndarray,
        event_ns: np.ndarray | int | None = None,
    ) -> None:
        """Write many rows through to Redis, then drop those entities from this process's cache."""
        await self.store.write_many(view, keys, values, event_ns)
        self.written(view, keys)

    async def aclose(self) -> None:
        """Stop the listener and close the store (idempotent)."""
        self.listener.close()
        await self.store.aclose()
