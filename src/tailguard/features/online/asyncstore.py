"""The Redis online store and its near-cached front for an asyncio loop (same semantics as the blocking ones).

``AsyncRedisOnlineStore`` reads with the same pipelined ``HMGET`` wire as the blocking store
(``wire.HmgetParser`` over asyncio streams, a small pool of connections so concurrent reads
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

from tailguard.clock import Clock, MonotonicClock
from tailguard.features.online.cached import CacheFront
from tailguard.features.online.errors import FeatureStoreError, FeatureStoreUnavailable
from tailguard.features.online.invalidation import InvalidationListener, InvalidationMode
from tailguard.features.online.nearcache import NearCache
from tailguard.features.online.protocol import Rows, ViewSet
from tailguard.features.online.redis import Replies, StoreCore, translate_error
from tailguard.features.online.wire import HmgetParser, handshake, hmget_head, pack_hmget
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
        self._kwargs = dict(self.client.connection_pool.connection_kwargs)
        self._hello, self._n_hello = handshake(
            self._kwargs.get("password"), self._kwargs.get("username"), int(self._kwargs.get("db") or 0)
        )
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[_Stream] = []
        self._max_idle = max_idle
        self._heads: dict[tuple[bytes, ...], tuple[bytes, bytes]] = {}

    async def _open(self) -> _Stream:
        path = self._kwargs.get("path")
        async with asyncio.timeout(self._connect_timeout_s):
            if path:
                r, w = await asyncio.open_unix_connection(path)
            else:
                host, port = self._kwargs.get("host", "127.0.0.1"), int(self._kwargs.get("port", 6379))
                r, w = await asyncio.open_connection(host, port)
        return _Stream(r, w)

    async def fetch(self, views: ViewSet, hkeys: Sequence[bytes]) -> Replies:
        """Raw ``HMGET`` replies for hash keys: one round trip whatever their number.

        As in the blocking store, a pooled connection found closed is replaced and the read
        sent once more, on a fresh connection: the other idle connections were opened before
        the same failure, so they are closed rather than tried one by one.  Nothing else is
        retried.
        """
        pieces = self._heads.get(views.fields)
        if pieces is None:
            pieces = self._heads[views.fields] = hmget_head(views.fields)
        self.reads += 1
        self.keys_read += len(hkeys)
        reused = bool(self._idle)
        try:
            return await self._fetch(views, hkeys, pieces)
        except FeatureStoreUnavailable as exc:
            if not reused or exc.reason != "unreachable":
                raise
            self._close_idle()
            self.errors -= 1  # counted again if the fresh connection fails too
            return await self._fetch(views, hkeys, pieces)

    def _close_idle(self) -> None:
        for s in self._idle:
            s.writer.close()
        self._idle.clear()

    async def _fetch(self, views: ViewSet, hkeys: Sequence[bytes], pieces: tuple[bytes, bytes]) -> Replies:
        stream: _Stream | None = None
        try:
            payload = pack_hmget(hkeys, *pieces)
            skip = 0
            if self._idle:
                stream = self._idle.pop()
            else:
                stream = await self._open()
                if self._n_hello:
                    payload, skip = self._hello + payload, self._n_hello
            parser = HmgetParser(len(hkeys), len(views.fields), skip)
            async with asyncio.timeout(self._timeout_s):
                stream.writer.write(payload)
                while True:
                    data = await stream.reader.read(262144)
                    if not data:
                        raise ConnectionError("the server closed the connection")
                    if parser.feed(data):
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
        return parser.replies

    async def read(self, views: ViewSet, key: Any, out: Rows | None = None) -> Rows:
        """One entity's values of ``views``: one ``HMGET``."""
        rows = out if out is not None else Rows.for_views(views)
        rows.reset(1)
        self.decode(views, await self.fetch(views, [self.layout.key(views.entity, key)]), rows)
        return rows

    async def read_many(self, views: ViewSet, keys: Sequence[Any], out: Rows | None = None) -> Rows:
        """Many entities' values of ``views``: one pipelined round trip."""
        rows = out if out is not None else Rows.for_views(views, max(len(keys), 1))
        rows.reset(len(keys))
        if keys:
            self.decode(views, await self.fetch(views, self.hash_keys(views, keys)), rows)
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
        hkeys, fld, payloads = self.write_plan(view, keys, values, event_ns)
        if not hkeys:
            return
        pipe = self.client.pipeline(transaction=False)
        for k, p in zip(hkeys, payloads, strict=True):
            pipe.hset(k, fld, p)
        inv = self.invalidation(hkeys)
        if inv is not None:
            pipe.publish(self.layout.channel, inv)
        try:
            await pipe.execute()
        except redis.exceptions.RedisError as exc:
            self.errors += 1
            raise translate_error(exc, "write") from exc
        self.writes += len(hkeys)

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


class AsyncNearCachedStore:
    """``AsyncOnlineStore``: ``AsyncRedisOnlineStore`` behind a near-cache (as ``NearCachedStore``)."""

    def __init__(
        self,
        store: AsyncRedisOnlineStore,
        *,
        capacity: int = 100_000,
        mode: InvalidationMode = InvalidationMode.TRACKING,
        clock: Clock | None = None,
        heartbeat_s: float = 0.5,
        entry_ttl_s: float = 60.0,
        start: bool = True,
    ) -> None:
        self.store = store
        self._clock: Clock = clock or MonotonicClock()
        self.cache = NearCache(capacity, self._clock, link_timeout_s=2 * heartbeat_s, entry_ttl_s=entry_ttl_s)
        self.front = CacheFront(store, self.cache, self._clock)
        self.listener = InvalidationListener(
            self.cache, dict(store.client.connection_pool.connection_kwargs), mode=mode,
            prefix=store.layout.prefix, channel=store.layout.channel, clock=self._clock,
            heartbeat_s=heartbeat_s,
        )
        if start:
            self.listener.start()

    async def read(self, views: ViewSet, key: Any, out: Rows | None = None) -> Rows:
        """One entity: from the cache when it may serve it, else one ``HMGET``."""
        return await self.read_many(views, [key], out)

    async def read_many(self, views: ViewSet, keys: Sequence[Any], out: Rows | None = None) -> Rows:
        """Many entities: cached ones from memory, the rest in one pipelined round trip."""
        rows = out if out is not None else Rows.for_views(views, max(len(keys), 1))
        rows.reset(len(keys))
        hkeys = self.store.hash_keys(views, keys)
        miss, epoch, now = self.front.lookup(views, hkeys, rows)
        if miss:
            try:
                replies = await self.store.fetch(views, [hkeys[i] for i in miss])
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
        v = view if isinstance(view, FeatureView) else self.store.stored_view(view)
        assert v.spec.entity is not None
        self.cache.invalidate(self.store.layout.keys(v.spec.entity, keys))

    def statistics(self) -> dict[str, Any]:
        """Store, near-cache and invalidation link counters."""
        return {
            **self.store.statistics(),
            "near_cache": self.front.statistics(),
            "link": self.listener.statistics(),
        }

    async def aclose(self) -> None:
        """Stop the listener and close the store (idempotent)."""
        self.listener.close()
        await self.store.aclose()
