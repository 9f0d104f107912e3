"""The online store protocol: view sets, read results that carry ages, consistency classes.

A **view set** is the views of one entity that a model reads, compiled once at service load:
their versions, widths, defaults and the hash field each is stored under.  A read of one
entity, or of N entities (a recommender's candidates), fills a ``Rows``: the float32 values
of every view side by side (the model-input form), the **age** of every value (now minus the
time it was written, in ns, so a decision can record it) and per-value flags (``ValueFlag``).

Consistency classes (per view, ``ViewPolicy``) matter only where a near-cache can serve a
value without asking the store: ``strict`` views never serve a value the process cannot prove
fresh; ``eventual`` views may serve a cached value up to ``max_staleness_s`` without proof.

Thread ownership: ``ViewSet`` and ``ViewPolicy`` are immutable (any thread); a ``Rows`` is
owned by the caller that passed it as ``out`` (stores never keep a reference to it).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from tailguard.errors import FeatureError
from tailguard.features.view import FeatureView

__all__ = [
    "NO_AGE",
    "AsyncOnlineStore",
    "Consistency",
    "OnlineStore",
    "Rows",
    "ValueFlag",
    "ViewPolicy",
    "ViewRef",
    "ViewSet",
    "field_name",
]

#: The age reported for a value the store does not hold (defaults served).
NO_AGE = -1


class Consistency(enum.Enum):
    """How much a view trusts a near-cache (see the module docstring)."""

    STRICT = "strict"
    EVENTUAL = "eventual"


@dataclass(frozen=True, slots=True)
class ViewPolicy:
    """A view's consistency class and, for ``eventual``, its staleness bound in float seconds."""

    consistency: Consistency = Consistency.STRICT
    #: Longest an ``eventual`` view serves a cached value the process cannot prove fresh.
    max_staleness_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.max_staleness_s >= 0.0:
            raise FeatureError(f"max_staleness_s must be >= 0, got {self.max_staleness_s!r}")


class ValueFlag(enum.IntFlag):
    """Per-value flags of a read (bits, combinable)."""

    NONE = 0
    MISSING = 1  # the store holds no value for this entity and view version: defaults served
    EXPIRED = 2  # the value is older than the view's TTL: defaults served
    CACHED = 4  # served from the process's near-cache (proven fresh unless UNCONFIRMED)
    UNCONFIRMED = 8  # cached value served without proof of freshness, within the staleness bound
    CORRUPT = 16  # the stored bytes do not match the view's layout: defaults served


@dataclass(frozen=True, slots=True)
class ViewRef:
    """One view of a view set: where its values sit in a row and how it is stored."""

    name: str
    version: str
    #: Hash field the view's value is stored under: ``b"<name>@<version>"``.
    field: bytes
    #: Columns ``lo:hi`` of the view in a ``Rows.values`` row.
    lo: int
    hi: int
    default: np.ndarray
    ttl_ns: int | None
    policy: ViewPolicy

    @property
    def strict(self) -> bool:
        """True for a ``strict`` view."""
        return self.policy.consistency is Consistency.STRICT

    @property
    def max_staleness_ns(self) -> int:
        """The staleness bound in integer ns (0 for strict views)."""
        return 0 if self.strict else round(self.policy.max_staleness_s * 1e9)

    @property
    def width(self) -> int:
        """Number of float32 features of the view."""
        return self.hi - self.lo


def field_name(name: str, version: str) -> bytes:
    """The hash field a view version is stored under (two versions coexist in one hash)."""
    return f"{name}@{version}".encode()


class ViewSet:
    """The stored views of one entity that a model reads, compiled once (immutable)."""

    __slots__ = ("columns", "defaults", "entity", "fields", "names", "views", "width")

    def __init__(
        self, views: Sequence[FeatureView], policies: Mapping[str, ViewPolicy] | None = None
    ) -> None:
        if not views:
            raise FeatureError("a view set needs at least one view")
        policies = policies or {}
        unknown = set(policies) - {v.name for v in views}
        if unknown:
            raise FeatureError(f"policies name views outside the view set: {sorted(unknown)}")
        entities = {v.spec.entity for v in views}
        if len(entities) != 1 or any(v.is_request for v in views):
            raise FeatureError(
                "a view set holds stored views of exactly one entity, got "
                f"{[(v.name, v.spec.entity) for v in views]}"
            )
        refs: list[ViewRef] = []
        lo = 0
        for v in views:
            hi = lo + len(v.spec.fields)
            refs.append(ViewRef(
                name=v.name, version=v.version, field=field_name(v.name, v.version), lo=lo, hi=hi,
                default=v.default_f32, ttl_ns=v.ttl_ns, policy=policies.get(v.name, ViewPolicy()),
            ))
            lo = hi
        if len({r.name for r in refs}) != len(refs):
            raise FeatureError(f"a view appears twice in a view set: {[r.name for r in refs]}")
        entity = entities.pop()
        assert entity is not None
        self.entity: str = entity
        self.views: tuple[ViewRef, ...] = tuple(refs)
        self.names: tuple[str, ...] = tuple(r.name for r in refs)
        self.fields: tuple[bytes, ...] = tuple(r.field for r in refs)
        self.width: int = lo
        self.defaults: np.ndarray = np.concatenate([r.default for r in refs]).astype(np.float32)
        self.columns: tuple[str, ...] = tuple(c for v in views for c in v.qualified())

    def __len__(self) -> int:
        return len(self.views)

    def __repr__(self) -> str:
        return f"ViewSet({self.entity!r}, {[f.decode() for f in self.fields]})"


class Rows:
    """The result of a read: ``n`` filled rows of values, ages and flags (caller-owned buffers).

    ``values[i]`` is entity ``i``'s float32 row (views side by side, ``ViewSet`` order);
    ``ages_ns[i, j]`` is now minus the write time of view ``j``'s value (``NO_AGE`` where the
    store holds none); ``flags[i, j]`` are its ``ValueFlag`` bits.  Only rows ``[:n]`` are valid.
    """

    __slots__ = ("ages_ns", "flags", "n", "values")

    def __init__(self, width: int, n_views: int, capacity: int = 1) -> None:
        self.values = np.empty((capacity, width), dtype=np.float32)
        self.ages_ns = np.empty((capacity, n_views), dtype=np.int64)
        self.flags = np.zeros((capacity, n_views), dtype=np.uint8)
        self.n = 0

    @classmethod
    def for_views(cls, views: ViewSet, capacity: int = 1) -> Rows:
        """Buffers shaped for ``views`` with room for ``capacity`` entities."""
        return cls(views.width, len(views), capacity)

    def reset(self, n: int) -> None:
        """Make room for ``n`` rows (reallocating only when the capacity is too small)."""
        if n > self.values.shape[0]:
            cap = max(n, 2 * self.values.shape[0])
            self.values = np.empty((cap, self.values.shape[1]), dtype=np.float32)
            self.ages_ns = np.empty((cap, self.ages_ns.shape[1]), dtype=np.int64)
            self.flags = np.zeros((cap, self.flags.shape[1]), dtype=np.uint8)
        self.flags[:n] = 0
        self.n = n

    def flag_any(self) -> int:
        """The union of every filled value's flags (0 when every value came plainly from the store)."""
        return int(np.bitwise_or.reduce(self.flags[: self.n], axis=None)) if self.n else 0


class OnlineStore(Protocol):
    """A shared or embedded online store, read on the decision thread.

    Keys are the entity's keys (``str`` or ``int``).  Writes stamp the write time from the
    store's clock (``wall_ns``: comparable across processes); ``event_ns`` defaults to it.
    """

    def read(self, views: ViewSet, key: Any, out: Rows | None = None) -> Rows:
        """One entity's values of ``views`` (one round trip for a remote store)."""
        ...

    def read_many(self, views: ViewSet, keys: Sequence[Any], out: Rows | None = None) -> Rows:
        """``len(keys)`` entities' values of ``views`` (one pipelined round trip)."""
        ...

    def write(
        self, view: str, key: Any, values: Sequence[float] | np.ndarray, event_ns: int | None = None
    ) -> None:
        """Write one entity's fields of ``view`` (declared order)."""
        ...

    def write_many(
        self, view: str, keys: Sequence[Any], values: np.ndarray, event_ns: np.ndarray | None = None
    ) -> None:
        """Write many entities' rows of ``view``; ``values`` has shape (n, n_fields)."""
        ...

    def statistics(self) -> dict[str, Any]:
        """Counters (reads, writes, errors...) for metrics; cheap, any thread."""
        ...

    def close(self) -> None:
        """Release connections and threads (idempotent)."""
        ...


class AsyncOnlineStore(Protocol):
    """``OnlineStore`` for an asyncio loop: the same semantics, awaited reads and writes."""

    async def read(self, views: ViewSet, key: Any, out: Rows | None = None) -> Rows:
        """See ``OnlineStore.read``."""
        ...

    async def read_many(self, views: ViewSet, keys: Sequence[Any], out: Rows | None = None) -> Rows:
        """See ``OnlineStore.read_many``."""
        ...

    async def write(
        self, view: str, key: Any, values: Sequence[float] | np.ndarray, event_ns: int | None = None
    ) -> None:
        """See ``OnlineStore.write``."""
        ...

    async def write_many(
        self, view: str, keys: Sequence[Any], values: np.ndarray, event_ns: np.ndarray | None = None
    ) -> None:
        """See ``OnlineStore.write_many``."""
        ...

    def statistics(self) -> dict[str, Any]:
        """See ``OnlineStore.statistics``."""
        ...

    async def aclose(self) -> None:
        """Release connections (idempotent)."""
        ...
