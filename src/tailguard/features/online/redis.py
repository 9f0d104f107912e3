"""The shared online store on Redis (redis-py, blocking): one round trip per read, however many views.

Layout and value format are in ``codec``.  A read of one entity is one ``HMGET`` of the view
set's fields; a read of N entities is one pipeline of N ``HMGET`` (no MULTI: one write of all
commands, one read of all replies), sent on the read path's own wire (``wire``: redis-py's
pipeline costs ~20 µs per command in Python) over a connection per reading thread.  Replies
in which every value is present are decoded per view in one numpy step (``replies``),
others value by value (``codec.place``).  A write is one pipeline of ``HSET`` plus, unless
disabled, one ``PUBLISH`` of the changed keys on the service's invalidation channel (the
near-cache's pub/sub mode listens to it; client tracking needs nothing from writers).

Errors: redis-py's ``TimeoutError`` and ``ConnectionError`` become ``FeatureStoreUnavailable``
(reason ``"timeout"`` / ``"unreachable"``), any other redis-py error ``FeatureStoreError``,
here and nowhere else.  The only retry is one immediate resend on a fresh connection when a
pooled connection turns out closed (the server restarted since it was opened); a timeout is
never retried: a decision would rather fall down its ladder than wait twice.

Thread ownership: each calling thread gets its own read connection and redis-py's pool its
own write connection, so any thread may call; the counters are plain integers (exact on one
thread, approximate across threads).  ``timeout_s`` bounds a whole read (all its replies).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from tailguard.clock import Clock, MonotonicClock
from tailguard.errors import ValidationError
from tailguard.features.online.codec import (
    KeyLayout,
    encode_invalidation,
    encode_values,
    place,
    place_records,
)
from tailguard.features.online.errors import FeatureStoreError, FeatureStoreUnavailable
from tailguard.features.online.protocol import Rows, ViewSet, field_name
from tailguard.features.online.replies import Fetched, Replies, ReplyShape, reply_shape
from tailguard.features.online.wire import HmgetRequest, WireConnection
from tailguard.features.view import FeatureView
from tailguard.spec import EntitySpec

__all__ = ["RedisOnlineStore", "translate_error"]

_INTS = {int}


def translate_error(exc: BaseException, what: str) -> FeatureStoreError:
    """The tailguard error for a redis-py (or socket) error raised while doing ``what``."""
    if isinstance(exc, redis.exceptions.TimeoutError | TimeoutError):
        return FeatureStoreUnavailable(f"online store timed out during {what}: {exc}", reason="timeout")
    if isinstance(exc, redis.exceptions.ConnectionError | ConnectionError | OSError):
        return FeatureStoreUnavailable(f"online store unreachable during {what}: {exc}", reason="unreachable")
    return FeatureStoreError(f"online store error during {what}: {exc}")


class StoreCore:
    """What the blocking and the asyncio Redis stores share: layout, encoding, decoding, counters."""

    def __init__(
        self,
        views: Mapping[str, FeatureView],
        entities: Iterable[EntitySpec],
        *,
        service: str,
        clock: Clock | None = None,
        publish_invalidations: bool = True,
        namespace: str = "tg",
    ) -> None:
        self.layout = KeyLayout(service, entities, namespace=namespace)
        self._views = {n: v for n, v in views.items() if not v.is_request}
        self._clock: Clock = clock or MonotonicClock()
        self.publish_invalidations = publish_invalidations
        self._plans: dict[tuple[bytes, ...], tuple[HmgetRequest, ReplyShape]] = {}
        #: Address and credentials of the store's server (its client's pool's; set by the subclass).
        self.conn_kwargs: dict[str, Any] = {}
        self.reads = 0  # round trips to read
        self.keys_read = 0  # entity keys read from the store
        self.writes = 0  # entity values written
        self.errors = 0  # calls that raised a store error

    def hash_keys(self, views: ViewSet, keys: Sequence[Any]) -> list[bytes]:
        """The hash keys of ``keys`` for the view set's entity."""
        return self.layout.keys(views.entity, keys)

    def read_plan(self, views: ViewSet) -> tuple[HmgetRequest, ReplyShape]:
        """The view set's command builder and regular reply shape (made once per view set)."""
        p = self._plans.get(views.fields)
        if p is None:
            p = self._plans[views.fields] = (
                HmgetRequest(views.fields, self.layout.tag(views.entity)),
                reply_shape(tuple(r.width for r in views.views)),
            )
        return p

    def pack_keys(self, views: ViewSet, keys: Sequence[Any]) -> bytes:
        """The ``HMGET`` batch for entity keys (validated as ``hash_keys`` does)."""
        req = self.read_plan(views)[0]
        if self.layout.int_keys(views.entity) and set(map(type, keys)) == _INTS:
            return req.pack_ints(keys)
        return req.pack(self.layout.keys(views.entity, keys))

    def decode(self, views: ViewSet, replies: Replies | Fetched, rows: Rows, start: int = 0) -> None:
        """Place fetched replies (a ``Fetched``, or one list per key in ``ViewSet`` order) into ``rows``."""
        now = self._clock.wall_ns()
        if isinstance(replies, Fetched):
            rec = replies.records
            if rec is not None:  # the regular case: every value present, decoded per view in one step
                for j, (ref, (w, v)) in enumerate(zip(views.views, replies.shape.names, strict=True)):
                    place_records(rows, ref, j, rec[w], rec[v], start, now)
                return
            assert replies.replies is not None
            replies = replies.replies
        if len(replies) == 1:
            reply = replies[0]
            for j, ref in enumerate(views.views):
                place(rows, ref, j, (reply[j],), start, now)
            return
        for j, ref in enumerate(views.views):
            place(rows, ref, j, [r[j] for r in replies], start, now)

    def write_plan(
        self,
        view: str | FeatureView,
        keys: Sequence[Any],
        values: np.ndarray,
        event_ns: np.ndarray | int | None,
    ) -> tuple[list[bytes], bytes, list[bytes]]:
        """Validate a write and encode it: hash keys, the view version's field, the values."""
        v = view if isinstance(view, FeatureView) else self.stored_view(view)
        width = len(v.spec.fields)
        arr = np.asarray(values, dtype=np.float32)
        if arr.ndim != 2 or arr.shape != (len(keys), width):
            raise ValidationError(
                f"view {v.name!r}: expected values of shape ({len(keys)}, {width}), got {arr.shape}",
                field=v.name,
            )
        assert v.spec.entity is not None
        hkeys = self.layout.keys(v.spec.entity, keys)
        return hkeys, field_name(v.name, v.version), encode_values(arr, self._clock.wall_ns(), event_ns)

    def queue_write(
        self,
        pipe: Any,
        view: str | FeatureView,
        keys: Sequence[Any],
        values: np.ndarray,
        event_ns: np.ndarray | int | None,
    ) -> int:
        """Validate and encode a write into a (sync or asyncio) redis-py pipeline: one ``HSET`` per
        key, then the invalidation ``PUBLISH`` unless publishing is off.  Returns the keys queued."""
        hkeys, fld, payloads = self.write_plan(view, keys, values, event_ns)
        for k, p in zip(hkeys, payloads, strict=True):
            pipe.hset(k, fld, p)
        inv = self.invalidation(hkeys) if hkeys else None
        if inv is not None:
            pipe.publish(self.layout.channel, inv)
        return len(hkeys)

    def invalidation(self, hkeys: Sequence[bytes]) -> bytes | None:
        """The payload to publish after a write, or None when publishing is off."""
        return encode_invalidation(hkeys) if self.publish_invalidations else None

    def stored_view(self, name: str) -> FeatureView:
        """The live ``FeatureView`` named ``name`` (``ValidationError`` if the store has none)."""
        try:
            return self._views[name]
        except KeyError:
            raise ValidationError(f"no stored view {name!r} in this store", field="view") from None

    def statistics(self) -> dict[str, Any]:
        """Counters: read round trips, keys read, values written, calls that failed."""
        return {
            "reads": self.reads, "keys_read": self.keys_read, "writes": self.writes, "errors": self.errors
        }


class RedisOnlineStore(StoreCore):
    """The Redis online store over a blocking redis-py client (see the module docstring).

    ``timeout_s`` bounds every socket read and write, ``connect_timeout_s`` a connection
    attempt.  Pass ``client`` to share a configured client (its retry policy is then yours).
    """

    def __init__(
        self,
        views: Mapping[str, FeatureView],
        entities: Iterable[EntitySpec],
        *,
        service: str,
        url: str = "redis://127.0.0.1:6379/0",
        timeout_s: float = 0.1,
        connect_timeout_s: float = 0.1,
        client: redis.Redis | None = None,
        clock: Clock | None = None,
        publish_invalidations: bool = True,
        namespace: str = "tg",
    ) -> None:
        super().__init__(
            views, entities, service=service, clock=clock,
            publish_invalidations=publish_invalidations, namespace=namespace,
        )
        self._own = client is None
        self.client: redis.Redis = client or redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
            health_check_interval=0,
        )
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self.conn_kwargs = dict(self.client.connection_pool.connection_kwargs)
        self._local = threading.local()
        self._wires: list[WireConnection] = []

    # -- reads -------------------------------------------------------------------------
    def _wire(self) -> WireConnection:
        wire: WireConnection | None = getattr(self._local, "wire", None)
        if wire is None:
            wire = WireConnection(self.conn_kwargs, self._timeout_s, self._connect_timeout_s)
            self._local.wire = wire
            self._wires.append(wire)
        return wire

    def bound_reads(self, budget_s: float | None) -> None:
        """Reads on this thread from now on wait at most ``budget_s`` when that is less than the
        store's timeout (None: the timeout alone).  The engine sets it to what each request has
        left, so a slow store costs a request its budget at most, never the whole timeout."""
        self._wire().budget_s = budget_s

    def send(self, views: ViewSet, payload: bytes, n: int) -> Fetched:
        """Send a packed batch of ``n`` HMGET commands of ``views`` and read the replies (one round trip)."""
        wire = self._wire()
        shape = self.read_plan(views)[1]
        self.reads += 1
        self.keys_read += n
        try:
            return wire.read(payload, shape, n)
        except FeatureStoreError:
            self.errors += 1
            raise
        except OSError as exc:  # socket errors, timeouts and refused connections included
            self.errors += 1
            raise translate_error(exc, "read") from exc

    def fetch_values(self, views: ViewSet, hkeys: Sequence[bytes]) -> Fetched:
        """The replies for hash keys, as read (regular replies stay one numpy block)."""
        return self.send(views, self.read_plan(views)[0].pack(hkeys), len(hkeys))

    def fetch(self, views: ViewSet, hkeys: Sequence[bytes]) -> Replies:
        """Raw ``HMGET`` replies for hash keys (one list per key): one round trip whatever their number."""
        return self.fetch_values(views, hkeys).lists()

    def read(self, views: ViewSet, key: Any, out: Rows | None = None) -> Rows:
        """One entity's values of ``views``: one ``HMGET``."""
        rows = out if out is not None else Rows.for_views(views)
        rows.reset(1)
        self.decode(views, self.send(views, self.pack_keys(views, (key,)), 1), rows)
        return rows

    def read_many(self, views: ViewSet, keys: Sequence[Any], out: Rows | None = None) -> Rows:
        """Many entities' values of ``views``: one pipelined round trip."""
        rows = out if out is not None else Rows.for_views(views, max(len(keys), 1))
        rows.reset(len(keys))
        if keys:
            self.decode(views, self.send(views, self.pack_keys(views, keys), len(keys)), rows)
        return rows

    # -- writes ------------------------------------------------------------------------
    def write(
        self,
        view: str | FeatureView,
        key: Any,
        values: Sequence[float] | np.ndarray,
        event_ns: int | None = None,
    ) -> None:
        """Write one entity's fields of ``view`` (a ``FeatureView`` writes its own version)."""
        self.write_many(view, [key], np.asarray(values, dtype=np.float32).reshape(1, -1), event_ns)

    def write_many(
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
            pipe.execute()
        except redis.exceptions.RedisError as exc:
            self.errors += 1
            raise translate_error(exc, "write") from exc
        self.writes += n

    # -- lifecycle ---------------------------------------------------------------------
    def ping(self) -> None:
        """One ``PING`` round trip (raises ``FeatureStoreUnavailable`` when unreachable)."""
        try:
            self.client.ping()
        except redis.exceptions.RedisError as exc:
            raise translate_error(exc, "ping") from exc

    def close(self) -> None:
        """Close the read connections, and the client's when this store created the client."""
        for w in self._wires:
            w.close()
        if self._own:
            self.client.close()
