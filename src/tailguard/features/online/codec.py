"""Key layout and the binary value format of the shared online store.

**Keys.**  One Redis hash per entity: ``tg:{<service>:<entity>:<key>}``.  The braces are a
Redis Cluster hash tag: every key that shares the tag (this hash, and any later per-entity
key such as aggregate state ``tg:{svc:user:42}:state``) lives in one slot, so one entity's
data is always one node's.  Fields are ``<view>@<version>``: two versions of a view coexist
during a migration, and a model reads exactly the versions it pins.  Every key of a service
starts with ``tg:{<service>:``, the prefix the near-cache's tracking subscribes to.

**Values.**  ``<written_ns:int64><event_ns:int64><v0:float32>...<vN-1:float32>``, little
endian, 16 + 4·N bytes: the float32 row is the model-input form, so a read is one
``frombuffer`` per view for a whole batch.  ``written_ns`` is wall-clock ns since the epoch
(comparable across processes; clock skew between hosts shows up in ages).  The layout has no
tag byte: the view version in the field name pins the schema, and a length that does not
match the view's width is reported as corrupt.  (msgspec's msgpack of the same data is ~2x
larger and decodes per value, not per batch; see benchmarks/features.py.)

**Invalidations** published on ``tg:inv:<service>`` are a msgpack array of hash keys.

Pure functions and immutable objects: any thread.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

import msgspec
import numpy as np

from tailguard.errors import FeatureError, ValidationError
from tailguard.features.online.protocol import NO_AGE, Rows, ValueFlag, ViewRef
from tailguard.spec import EntitySpec

__all__ = [
    "HEADER_BYTES",
    "KeyLayout",
    "decode_invalidation",
    "decode_values",
    "encode_invalidation",
    "encode_values",
    "place",
    "place_records",
    "value_dtype",
]

#: Bytes before the float32 row: write time and event time, int64 each.
HEADER_BYTES = 16

_MISSING = int(ValueFlag.MISSING)
_EXPIRED = int(ValueFlag.EXPIRED)
_CORRUPT = int(ValueFlag.CORRUPT)
_inv_encoder = msgspec.msgpack.Encoder()
_inv_decoder = msgspec.msgpack.Decoder(list[bytes])


class KeyLayout:
    """Maps (entity, key) to the hash key of one service; checks key types per entity."""

    __slots__ = ("_int", "_tags", "channel", "prefix")

    def __init__(self, service: str, entities: Iterable[EntitySpec], *, namespace: str = "tg") -> None:
        for part, what in ((service, "service"), (namespace, "namespace")):
            if not part or any(c in part for c in "{}\n\r ") or len(part) > 128:
                raise FeatureError(f"bad {what} name for the online store: {part!r}")
        #: Prefix of every key of the service (client tracking subscribes to it).
        self.prefix: bytes = f"{namespace}:{{{service}:".encode()
        #: Pub/sub channel for invalidations.
        self.channel: bytes = f"{namespace}:inv:{service}".encode()
        self._tags = {e.name: self.prefix + e.name.encode() + b":" for e in entities}
        self._int = {e.name: e.key_dtype == "int64" for e in entities}

    def key(self, entity: str, key: Any) -> bytes:
        """The hash key of one entity key (``ValidationError`` on a key of the wrong type)."""
        tag = self._tags[entity]
        if self._int[entity]:
            if type(key) is not int:
                key = _int_key(entity, key)
            return tag + str(key).encode() + b"}"
        if type(key) is not str:
            _bad_key(entity, key, "str")
        return tag + key.encode() + b"}"

    def tag(self, entity: str) -> bytes:
        """The start of every hash key of ``entity`` (the key and a closing brace follow)."""
        return self._tags[entity]

    def int_keys(self, entity: str) -> bool:
        """True when ``entity``'s keys are integers."""
        return self._int[entity]

    def keys(self, entity: str, keys: Sequence[Any]) -> list[bytes]:
        """Hash keys of many entity keys, in order."""
        tag = self._tags[entity]
        if self._int[entity]:
            return [tag + str(k if type(k) is int else _int_key(entity, k)).encode() + b"}" for k in keys]
        if set(map(type, keys)) - {str}:
            bad = next(k for k in keys if type(k) is not str)
            _bad_key(entity, bad, "str")
        return [tag + k.encode() + b"}" for k in keys]


def _int_key(entity: str, key: Any) -> int:
    if isinstance(key, np.integer):
        return int(key)
    _bad_key(entity, key, "int")


def _bad_key(entity: str, key: Any, expected: str) -> NoReturn:
    raise ValidationError(
        f"entity {entity!r} keys are {expected}, got {type(key).__name__} {key!r}", field=f"keys.{entity}"
    )


@functools.lru_cache(maxsize=256)
def value_dtype(width: int) -> np.dtype[Any]:
    """The structured dtype of one stored value of a ``width``-feature view."""
    return np.dtype([("written_ns", "<i8"), ("event_ns", "<i8"), ("values", "<f4", (width,))])


def encode_values(
    values: np.ndarray, written_ns: int, event_ns: np.ndarray | int | None = None
) -> list[bytes]:
    """Pack ``values`` (n, width) into n stored values with one write time (and event times)."""
    n, width = values.shape
    rec = np.empty(n, dtype=value_dtype(width))
    rec["written_ns"] = written_ns
    rec["event_ns"] = written_ns if event_ns is None else event_ns
    rec["values"] = values
    buf = rec.tobytes()
    size = rec.dtype.itemsize
    return [buf[i * size : (i + 1) * size] for i in range(n)]


def decode_values(raws: Sequence[bytes], width: int) -> np.ndarray:
    """Unpack stored values of one view (each exactly ``HEADER_BYTES + 4*width`` bytes) at once."""
    return np.frombuffer(b"".join(raws), dtype=value_dtype(width))


def place(
    rows: Rows, ref: ViewRef, j: int, replies: Sequence[bytes | None], start: int, now_wall_ns: int
) -> None:
    """Decode view ``j``'s replies for rows ``start..start+len(replies)`` into ``rows``.

    Sets values, ages and flags: MISSING (no value) and CORRUPT (wrong length) serve the
    view's defaults with ``NO_AGE``; EXPIRED (older than the TTL) serves defaults with the age.
    """
    size = HEADER_BYTES + 4 * ref.width
    good: list[bytes] = []
    at: list[int] = []
    lo, hi = ref.lo, ref.hi
    for i, raw in enumerate(replies, start):
        if raw is not None and len(raw) == size:
            good.append(raw)
            at.append(i)
            continue
        rows.values[i, lo:hi] = ref.default
        rows.ages_ns[i, j] = NO_AGE
        rows.flags[i, j] |= _MISSING if raw is None else _CORRUPT
    if not good:
        return
    rec = decode_values(good, ref.width)
    ages = now_wall_ns - rec["written_ns"]
    if len(good) == 1:  # the one-entity read: scalar stores beat fancy indexing
        i = at[0]
        rows.ages_ns[i, j] = ages[0]
        if ref.ttl_ns is not None and ages[0] > ref.ttl_ns:
            rows.values[i, lo:hi] = ref.default
            rows.flags[i, j] |= _EXPIRED
        else:
            rows.values[i, lo:hi] = rec["values"][0]
        return
    idx = np.array(at, dtype=np.intp)
    rows.values[idx, lo:hi] = rec["values"]
    rows.ages_ns[idx, j] = ages
    if ref.ttl_ns is not None:
        old = idx[ages > ref.ttl_ns]
        if len(old):
            rows.values[old, lo:hi] = ref.default
            rows.flags[old, j] |= _EXPIRED


def place_records(
    rows: Rows, ref: ViewRef, j: int, written: np.ndarray, values: np.ndarray, start: int, now_wall_ns: int
) -> None:
    """View ``j``'s values for rows ``start..start+len(written)``, every one present (write times
    ``written``, float32 ``values`` of shape (n, width), strided views are fine): vectorised."""
    stop = start + len(written)
    ages = now_wall_ns - written
    lo, hi = ref.lo, ref.hi
    rows.values[start:stop, lo:hi] = values
    rows.ages_ns[start:stop, j] = ages
    if ref.ttl_ns is not None:
        old = np.flatnonzero(ages > ref.ttl_ns)
        if len(old):
            old += start
            rows.values[old, lo:hi] = ref.default
            rows.flags[old, j] |= _EXPIRED


def encode_invalidation(keys: Sequence[bytes]) -> bytes:
    """The pub/sub payload naming the hash keys a write changed."""
    return _inv_encoder.encode(list(keys))


def decode_invalidation(payload: bytes) -> list[bytes]:
    """The hash keys of a pub/sub invalidation (``ValidationError`` on a malformed payload)."""
    try:
        return _inv_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise ValidationError(f"malformed invalidation payload: {exc}", field="invalidation") from exc
