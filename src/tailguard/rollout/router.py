"""Stable hash routing: which routing keys the candidate answers.

A key's **bucket** is the 8-byte ``blake2b(salt + b"\\0" + key)`` read as an unsigned
integer (little-endian): the same key lands in the same bucket in every process and on every replica (no
``hash()``: Python salts string hashes per process), so routing is sticky per key without any
per-key memory.  The candidate takes keys whose bucket is below ``share * 2**64``; a key that
is in at 5% is therefore still in at 25% (shares only grow through a plan), and the share of
distinct keys routed converges on ``share``.

Keys: ``str``, ``bytes`` and ``int`` hash their value; a mapping (several entities) hashes
its sorted items; anything else its ``repr``.  Cost: one blake2b of a short string (well
about 0.3 us: the salt is absorbed once and its hasher state copied per key) per routed
request; nothing when no rollout is active.

Owner: the engine's owner thread (``Router`` is immutable after construction).
"""

from __future__ import annotations

from collections.abc import Mapping
from hashlib import blake2b
from typing import Any

import numpy as np

__all__ = ["Router", "bucket_of", "first_key"]

_SPACE = 1 << 64


def _key_bytes(key: Any) -> bytes:
    if type(key) is str:
        return key.encode()
    if type(key) is bytes:
        return key
    if type(key) is int:
        return b"i:%d" % key
    if isinstance(key, Mapping):
        return repr(sorted((str(k), v) for k, v in key.items())).encode()
    return repr(key).encode()


def bucket_of(key: Any, salt: bytes = b"") -> int:
    """The key's bucket in ``0 .. 2**64 - 1`` (stable across processes and machines)."""
    h = blake2b(salt + b"\0", digest_size=8)
    h.update(_key_bytes(key))
    return int.from_bytes(h.digest(), "little")


class Router:
    """Sends the keys whose bucket is below ``share`` of the hash space to the candidate."""

    __slots__ = ("_h0", "_threshold", "salt", "share")

    def __init__(self, share: float, salt: str = "") -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be within 0..1, got {share}")
        self.share = share
        self.salt = salt.encode()
        self._threshold = _SPACE if share >= 1.0 else int(share * _SPACE)
        self._h0 = blake2b(self.salt + b"\0", digest_size=8)  # the salt absorbed once

    def to_candidate(self, key: Any) -> bool:
        """Whether ``key`` is routed to the candidate (``bucket_of(key, salt) < share * 2**64``)."""
        h = self._h0.copy()
        h.update(key.encode() if type(key) is str else _key_bytes(key))
        return int.from_bytes(h.digest(), "little") < self._threshold


def first_key(keys: Any) -> Any:
    """A batch's default routing key: its first entity key (the whole mapping for several
    entities; None for an empty batch)."""
    if isinstance(keys, Mapping):
        return keys
    if isinstance(keys, np.ndarray):
        return keys[0].item() if keys.size else None
    return keys[0] if len(keys) else None
