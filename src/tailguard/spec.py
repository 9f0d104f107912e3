"""The service spec: frozen msgspec structs loaded from ``service.toml``.

A service directory holds ``service.toml`` (this spec), the Python modules its transforms
reference, and the model repository.  ``load_spec`` parses the TOML, converts it into the
frozen structs below (unknown fields and bad values rejected with the field path, e.g.
``$.feature_views[1].fields[0].dtype``), then checks cross references (a view's entity, a
rung's model, unique names).  The format is documented in ``docs/service-spec.md``.

Durations are written as strings with a unit (``"250us"``, ``"2ms"``, ``"1.5s"``) or as a
number of seconds, and held as float seconds.
"""

from __future__ import annotations

import enum
import math
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from tailguard.errors import SpecError

__all__ = [
    "DTYPES",
    "Budgets",
    "DriftSinkSpec",
    "DriftSpec",
    "DriftThreshold",
    "Duration",
    "EventAction",
    "EntitySpec",
    "FeatureViewSpec",
    "FieldSpec",
    "LatePolicy",
    "ModelSpec",
    "OnTimeout",
    "OnlineSpec",
    "PriorityClass",
    "RateLimitSpec",
    "RungKind",
    "RungSpec",
    "ServiceSpec",
    "ServingSpec",
    "StreamSpec",
    "ViewSource",
    "dec_hook",
    "load_spec",
    "read_toml",
    "parse_spec",
]

#: Feature dtypes a view may declare (numpy names).
DTYPES = ("float32", "float64", "int32", "int64", "bool")
DType = Literal["float32", "float64", "int32", "int64", "bool"]
Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(-?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ns|us|µs|ms|s|m|h)\s*$")


class Duration(float):
    """A duration in float seconds, parsed from ``"250us"``/``"2ms"``/``"1.5s"`` or a number."""

    @classmethod
    def parse(cls, value: object) -> Duration:
        """Parse a duration string (``"250us"``) or a number of seconds; raise ValueError/TypeError."""
        if isinstance(value, bool):
            raise TypeError("expected a duration such as '250us', '2ms' or '1.5s'")
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str):
            m = _DURATION.match(value)
            if m is None:
                raise ValueError(f"bad duration {value!r}: use a number and a unit (ns, us, ms, s, m, h)")
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
        else:
            raise TypeError("expected a duration such as '250us', '2ms' or '1.5s'")
        if not math.isfinite(seconds):
            raise ValueError("a duration must be finite")
        if seconds < 0:
            raise ValueError("a duration cannot be negative")
        return cls(seconds)


def dec_hook(tp: type, obj: Any) -> Any:
    """msgspec's ``dec_hook`` for spec-like tables: ``Duration`` fields from strings or numbers."""
    if tp is Duration:
        return Duration.parse(obj)
    # msgspec's dec_hook protocol: NotImplementedError means "not a type this hook converts".
    raise NotImplementedError(f"unsupported type {tp!r}")


class _Spec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of the spec structs (each repeats the options: msgspec does not inherit them)."""


class ViewSource(enum.Enum):
    """Where a view's values come from."""

    STREAM = "stream"  # updated per event by an incremental transform (or written directly)
    BATCH = "batch"  # written in bulk (materialized from history)
    REQUEST = "request"  # computed on demand from the request context at decision time


class LatePolicy(enum.Enum):
    """What a stream view does with an event older than the entity's last one (out of order)."""

    DROP = "drop"  # counted, not applied
    APPLY = "apply"  # applied if not behind the watermark (the view's aggregates accept it)


class EventAction(enum.Enum):
    """Where a stream event that is not applied goes (counted per reason in every case)."""

    DROP = "drop"
    DEAD_LETTER = "dead_letter"  # handed to the dead-letter sink with its reason
    RAISE = "raise"  # ValidationError to the caller (in-process); the ingest worker dead-letters


class RungKind(enum.Enum):
    """What answers at a ladder rung."""

    MODEL = "model"
    LAST_GOOD = "last_good"
    DEFAULT = "default"


class OnTimeout(enum.Enum):
    """A priority class's answer to a request predicted to miss its deadline."""

    DEGRADE = "degrade"
    REJECT = "reject"


class EntitySpec(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The thing features are about (instrument, player, user, item)."""

    name: Name
    key_dtype: Literal["str", "int64"] = "str"
    description: str = ""
    #: The keys identify people: the audit log never holds them as they are (docs/audit.md).
    pii: bool = False
    #: ``hash``: a keyed hash under a per-subject key (erasable); ``drop``: not logged at all.
    pii_mode: Literal["hash", "drop"] = "hash"


class FieldSpec(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One feature: name, numpy dtype and the default served for an unknown or stale entity."""

    name: Name
    dtype: DType = "float32"
    default: float = 0.0
    description: str = ""


class FeatureViewSpec(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A named, versioned group of features about one entity."""

    name: Name
    entity: Name | None = None
    fields: tuple[FieldSpec, ...]
    source: ViewSource = ViewSource.STREAM
    #: Values older than this are served as defaults and flagged stale (None: never stale).
    ttl: Duration | None = None
    #: ``"module:attr"`` in the service directory: an incremental transform for stream views,
    #: a vectorised function for request views.
    transform: str | None = None
    #: Request views: the context fields the transform reads.  Stream views: the event
    #: fields the transform reads (numbers); an event recomputes the view only if it carries
    #: one of them, and must then carry all (empty: every event of the entity).
    inputs: tuple[Name, ...] = ()
    description: str = ""
    #: Stream views: how far behind the latest event time seen an event may be and still
    #: count (the watermark is that time minus this); None: no watermark, only per-entity order.
    allowed_lateness: Duration | None = None
    #: Stream views: out-of-order events within the allowed lateness are dropped or applied.
    late: LatePolicy = LatePolicy.DROP
    #: Stored views read through a near-cache (``[online] backend = "redis"``): ``strict`` never
    #: serves a value the process cannot prove fresh; ``eventual`` may serve a cached value up to
    #: ``max_staleness`` old when freshness cannot be proven (docs/features-online.md).
    consistency: Literal["strict", "eventual"] = "strict"
    max_staleness: Duration | None = None


class ModelSpec(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A model: where its versions live and which one serves."""

    name: Name
    repository: str
    version_policy: Literal["latest", "pinned"] = "latest"
    version: str | None = None
    #: ``auto`` prefers a compiled-tree artifact when the version has one, else ONNX.
    runtime: Literal["auto", "onnx", "trees"] = "auto"
    intra_op_threads: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    #: ``thread``: run on a dedicated worker so a decision stops waiting at its deadline
    #: (costs a thread hand-off per call); ``inline``: call directly (fastest).
    isolation: Literal["inline", "thread"] = "inline"
    #: Inferences run at load so that the first request meets a warm model.
    warmup: Annotated[int, msgspec.Meta(ge=0)] = 64


class PriorityClass(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A priority class; level 1 is the highest.  A request may shorten, not lengthen, its budget."""

    name: Name
    level: Annotated[int, msgspec.Meta(ge=1, le=16)]
    budget: Duration
    #: Server queue policy: most requests of this class waiting at once.
    max_queue_size: Annotated[int, msgspec.Meta(ge=1)] = 1024
    #: What the server does with a request predicted to miss its deadline: answer from a
    #: cheaper ladder rung ("degrade") or refuse it with a retry-after ("reject").
    on_timeout: OnTimeout = OnTimeout.DEGRADE


class RateLimitSpec(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A token bucket per client id: ``rate`` requests per second, bursts of ``burst``."""

    rate: Annotated[float, msgspec.Meta(gt=0)]
    burst: Annotated[int, msgspec.Meta(ge=1)]


class ServingSpec(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How ``tailguard serve`` schedules requests (Triton's vocabulary where it has a word)."""

    #: Largest micro-batch of single-entity requests scored together.
    max_batch_size: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 64
    #: How long a batch may wait to grow; 0 never waits (a batch forms from what queued
    #: while the previous one ran).
    max_queue_delay: Duration = Duration(0.0)
    #: A lower class whose oldest request has waited this long is served next, at most one
    #: batch per interval, so strict priority cannot starve it.
    starvation_guard: Duration = Duration(5e-3)
    #: Requests queued over all classes; above it the lowest class is shed first.
    max_total_queued: Annotated[int, msgspec.Meta(ge=1)] = 4096
    #: Per-client rate limit (None: none).
    rate_limit: RateLimitSpec | None = None
    #: A batch of a lower class may take at most this share of the tightest budget of the
    #: classes above it (requests are not read while a batch runs).
    batch_share: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 0.5


class Budgets(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Per-stage latency budgets (targets that histograms are judged against)."""

    ingest: Duration = Duration(50e-6)
    features: Duration = Duration(200e-6)
    inference: Duration = Duration(1e-3)
    delivery: Duration = Duration(50e-6)
    total: Duration = Duration(2e-3)


class RungSpec(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One rung of the fallback ladder, tried in order."""

    name: Name
    kind: RungKind
    model: Name | None = None
    #: last_good rungs: an answer older than this is not served (None: any age).
    max_age: Duration | None = None
    #: default rungs: the declared outputs, by output name.
    outputs: dict[str, float] | None = None
    #: model rungs: a circuit breaker opens after this many failed calls in a row (raised,
    #: timed out, non-finite; 0: no breaker) and skips the rung for ``breaker_open``, then lets
    #: one trial call through (``resilience.breaker``).
    breaker_failures: Annotated[int, msgspec.Meta(ge=0)] = 5
    breaker_open: Duration = Duration(1.0)


class DriftThreshold(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """When one kind of drift score alerts: at or over ``alert`` for ``enter_windows`` windows
    in a row; the alert clears after ``exit_windows`` windows in a row under ``clear``."""

    alert: Annotated[float, msgspec.Meta(ge=0.0)]
    clear: Annotated[float, msgspec.Meta(ge=0.0)]
    enter_windows: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 2
    exit_windows: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3


class DriftSinkSpec(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where drift alerts go: a JSON log line, an HTTP POST, or a NATS subject."""

    kind: Literal["log", "webhook", "nats"]
    #: webhook: ``http(s)://...``; nats: ``nats://host:port``.
    url: str | None = None
    #: nats: the subject (default ``tailguard.drift.<service>``).
    subject: str | None = None
    #: Per delivery (webhook request, NATS connect/publish).
    timeout: Duration = Duration(2.0)
    #: Alerts waiting for delivery; more are dropped (counted), never waited for.
    queue_size: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1000
    #: webhook: extra request headers.
    headers: dict[str, str] = {}


class DriftSpec(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[drift]``: feature and prediction drift against a training reference (docs/drift.md)."""

    enabled: bool = False
    #: The reference file (``tailguard drift reference``), relative to the service directory.
    reference: str = "reference/training.npz"
    #: Decisions per window; a window also closes after ``window_interval`` once it holds
    #: ``min_window`` decisions (None: by count only).
    window: Annotated[int, msgspec.Meta(ge=10, le=10_000_000)] = 1000
    window_interval: Duration | None = Duration(60.0)
    min_window: Annotated[int, msgspec.Meta(ge=10)] = 200
    #: Decision rows buffered for the side path; rows arriving when it is full are dropped (counted).
    capacity: Annotated[int, msgspec.Meta(ge=64, le=1 << 24)] = 16384
    #: The output the change detectors and delayed labels use (None: the first).
    output: str | None = None
    detectors: tuple[Literal["adwin", "page_hinkley"], ...] = ("adwin",)
    adwin_delta: Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)] = 0.002
    ph_threshold: Annotated[float, msgspec.Meta(gt=0.0)] = 50.0
    ph_delta: Annotated[float, msgspec.Meta(ge=0.0)] = 0.1
    psi: DriftThreshold = DriftThreshold(alert=0.25, clear=0.1)
    ks: DriftThreshold = DriftThreshold(alert=0.15, clear=0.1)
    #: A detection alerts at once; the alert clears after this many windows without one.
    detector_exit_windows: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    #: Keep each decision's key and time so ``observe_label`` can find its prediction.
    labels: bool = False
    label_capacity: Annotated[int, msgspec.Meta(ge=1, le=1 << 24)] = 65536
    sinks: tuple[DriftSinkSpec, ...] = ()


class StreamSpec(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[stream]``: how the stream processor and ingest worker treat events (docs/features.md)."""

    #: The event field holding a unique id; a repeated id within ``dedupe_window`` is a duplicate.
    event_id: Name | None = None
    #: How many recent event ids are remembered for deduplication.
    dedupe_window: Annotated[int, msgspec.Meta(ge=1, le=1 << 26)] = 100_000
    #: An event time further than this ahead of the wall clock is bad input (None: no bound).
    max_future: Duration | None = None
    #: An event time further than this behind the wall clock is bad input (None: no bound).
    max_past: Duration | None = None
    #: Bad input: missing field, wrong type, non-finite number, time out of bounds, unknown entity.
    on_bad: EventAction = EventAction.DEAD_LETTER
    on_duplicate: EventAction = EventAction.DROP
    on_late: EventAction = EventAction.DROP


class OnlineSpec(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[online]``: where stored feature views live and how a replica reads them
    (docs/features-online.md).  ``memory``: the embedded store; ``redis``: a shared Redis
    behind a per-process near-cache kept coherent by invalidation pushes."""

    backend: Literal["memory", "redis"] = "memory"
    #: ``redis://host:port/db``, ``rediss://...`` or ``unix:///path``.
    url: str = "redis://127.0.0.1:6379/0"
    #: Key prefix shared by the services that read the same values (None: the service name).
    keyspace: Name | None = None
    #: How writes reach the near-cache: Redis client tracking, or pub/sub from the writers.
    invalidation: Literal["tracking", "pubsub"] = "tracking"
    #: Longest a read waits for Redis before the request falls down the ladder.
    timeout: Duration = Duration(0.05)
    connect_timeout: Duration = Duration(0.1)
    #: Entities the near-cache holds (CLOCK eviction beyond it).
    cache_capacity: Annotated[int, msgspec.Meta(ge=1, le=1 << 26)] = 100_000
    #: A cached entry is refetched after this even while pushes prove it fresh (the safety net).
    cache_entry_ttl: Duration = Duration(60.0)
    #: The invalidation link pings when idle this long and is declared lost after twice it.
    heartbeat: Duration = Duration(0.5)
    #: Entity keys a replica remembers for its ladder's last-good answers (later keys get none).
    max_keys: Annotated[int, msgspec.Meta(ge=1, le=1 << 30)] = 1_000_000
    #: The store's circuit breaker (resilience.breaker) opens after this many failed reads in a row
    #: (0: never), or when half the last ``breaker_window`` reads failed or were slow (0: never).
    breaker_failures: Annotated[int, msgspec.Meta(ge=0, le=1 << 20)] = 5
    breaker_window: Annotated[int, msgspec.Meta(ge=0, le=1 << 20)] = 20
    #: First open period (no read touches Redis), doubled per failed trial up to 1 s (or itself).
    breaker_open: Duration = Duration(1.0)
    #: A read slower than this is slow (None: half the ``timeout``).
    breaker_slow: Duration | None = None


class ServiceSpec(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A whole service: entities, feature views, models, priorities, budgets and the ladder."""

    name: Name
    description: str = ""
    entities: tuple[EntitySpec, ...] = ()
    feature_views: tuple[FeatureViewSpec, ...] = ()
    models: tuple[ModelSpec, ...]
    priorities: tuple[PriorityClass, ...] = (
        PriorityClass(name="critical", level=1, budget=Duration(1e-3)),
        PriorityClass(name="normal", level=2, budget=Duration(5e-3)),
        PriorityClass(name="bulk", level=3, budget=Duration(50e-3)),
    )
    default_priority: Name = "normal"
    budgets: Budgets = Budgets()
    ladder: tuple[RungSpec, ...]
    serving: ServingSpec = ServingSpec()
    stream: StreamSpec = StreamSpec()
    drift: DriftSpec = DriftSpec()
    online: OnlineSpec = OnlineSpec()

    def view(self, name: str) -> FeatureViewSpec:
        """The feature view named ``name`` (KeyError if none)."""
        for v in self.feature_views:
            if v.name == name:
                return v
        raise KeyError(name)

    def model(self, name: str) -> ModelSpec:
        """The model named ``name`` (KeyError if none)."""
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def priority(self, name: str) -> PriorityClass:
        """The priority class named ``name`` (KeyError if none)."""
        for p in self.priorities:
            if p.name == name:
                return p
        raise KeyError(name)


def parse_spec(data: dict[str, Any], *, source: str = "") -> ServiceSpec:
    """Convert parsed TOML into a checked ``ServiceSpec``; raises ``SpecError`` naming the path."""
    try:
        spec = msgspec.convert(data, ServiceSpec, dec_hook=dec_hook)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        path = msg.rsplit(" - at ", 1)[1].strip("`") if " - at " in msg else "$"
        raise SpecError(msg, path=path, source=source) from exc
    _check_references(spec, source)
    return spec


def load_spec(path: str | Path) -> ServiceSpec:
    """Load ``service.toml`` (or a service directory containing it)."""
    data, p = read_toml(path, "service.toml", "service spec")
    return parse_spec(data, source=str(p))


def read_toml(path: str | Path, default_name: str, what: str) -> tuple[dict[str, Any], Path]:
    """The TOML table of ``path`` (a directory: its ``default_name``) and the file read;
    ``SpecError`` naming ``what`` when it is missing or not TOML."""
    p = Path(path)
    if p.is_dir():
        p = p / default_name
    try:
        with p.open("rb") as f:
            return tomllib.load(f), p
    except FileNotFoundError as exc:
        raise SpecError(f"no {what} at {p}", source=str(p)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"invalid TOML: {exc}", source=str(p)) from exc


def _fail(msg: str, path: str, source: str) -> SpecError:
    return SpecError(f"{msg} - at `{path}`", path=path, source=source)


def _unique(names: list[str], path: str, source: str) -> None:
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            raise _fail(f"duplicate name {n!r}", f"{path}[{i}].name", source)
        seen.add(n)


def _check_references(spec: ServiceSpec, source: str) -> None:
    _unique([e.name for e in spec.entities], "$.entities", source)
    _unique([v.name for v in spec.feature_views], "$.feature_views", source)
    _unique([m.name for m in spec.models], "$.models", source)
    _unique([p.name for p in spec.priorities], "$.priorities", source)
    _unique([r.name for r in spec.ladder], "$.ladder", source)
    entities = {e.name for e in spec.entities}
    for i, v in enumerate(spec.feature_views):
        at = f"$.feature_views[{i}]"
        if v.source is not ViewSource.REQUEST:
            if v.entity is None:
                raise _fail("a stored view needs an entity", f"{at}.entity", source)
            if v.entity not in entities:
                raise _fail(f"unknown entity {v.entity!r}", f"{at}.entity", source)
        if not v.fields:
            raise _fail("a view needs at least one field", f"{at}.fields", source)
        _unique([f.name for f in v.fields], f"{at}.fields", source)
        if v.source is ViewSource.REQUEST and v.transform is None and not v.inputs:
            raise _fail("a request view needs a transform or inputs", f"{at}.transform", source)
        if v.transform is not None and ":" not in v.transform:
            raise _fail("a transform is written 'module:attribute'", f"{at}.transform", source)
        if v.late is LatePolicy.APPLY and v.allowed_lateness is None:
            raise _fail("late = 'apply' needs an allowed_lateness (the watermark)", f"{at}.late", source)
        _check_consistency(v, at, source)
    for i, m in enumerate(spec.models):
        if m.version_policy == "pinned" and not m.version:
            raise _fail("version_policy 'pinned' needs a version", f"$.models[{i}].version", source)
    levels = [p.level for p in spec.priorities]
    if len(set(levels)) != len(levels):
        raise _fail("priority levels must be distinct", "$.priorities", source)
    if spec.default_priority not in {p.name for p in spec.priorities}:
        raise _fail(f"unknown priority {spec.default_priority!r}", "$.default_priority", source)
    if not spec.ladder:
        raise _fail("the ladder needs at least one rung", "$.ladder", source)
    models = {m.name for m in spec.models}
    for i, r in enumerate(spec.ladder):
        at = f"$.ladder[{i}]"
        if r.kind is RungKind.MODEL:
            if r.model is None or r.model not in models:
                raise _fail(f"unknown model {r.model!r}", f"{at}.model", source)
        elif r.model is not None:
            raise _fail("only a model rung names a model", f"{at}.model", source)
        if r.kind is RungKind.DEFAULT:
            if not r.outputs:
                raise _fail("a default rung declares its outputs", f"{at}.outputs", source)
            if i != len(spec.ladder) - 1:
                raise _fail("the default rung must be the last", f"{at}.kind", source)
    if spec.ladder[0].kind is not RungKind.MODEL:
        raise _fail("the first rung must be a model", "$.ladder[0].kind", source)
    _check_drift(spec.drift, source)
    _check_online(spec, source)


def _check_consistency(v: FeatureViewSpec, at: str, source: str) -> None:
    if v.consistency == "eventual":
        if v.source is ViewSource.REQUEST:
            raise _fail("a request view is computed per request: it has no consistency class",
                        f"{at}.consistency", source)
        if v.max_staleness is None or v.max_staleness <= 0:
            raise _fail("an eventual view needs a positive max_staleness (e.g. '500ms'): how old a "
                        "cached value it may serve when its freshness cannot be proven",
                        f"{at}.max_staleness", source)
    elif v.max_staleness is not None:
        raise _fail("max_staleness applies to consistency = 'eventual' views only (a strict view never "
                    "serves a value it cannot prove fresh)", f"{at}.max_staleness", source)


def _check_online(spec: ServiceSpec, source: str) -> None:
    o = spec.online
    if not o.url.startswith(("redis://", "rediss://", "unix://")):
        raise _fail(f"bad online store url {o.url!r}: use redis://host:port/db, rediss://... or unix:///path",
                    "$.online.url", source)
    for key in ("timeout", "connect_timeout", "cache_entry_ttl", "heartbeat", "breaker_open", "breaker_slow"):
        if getattr(o, key) is not None and getattr(o, key) <= 0:
            raise _fail(f"{key} must be positive", f"$.online.{key}", source)
    if o.backend == "redis" and spec.ladder and spec.ladder[-1].kind is RungKind.MODEL:
        raise _fail("with backend = 'redis' the ladder must end with a last_good or default rung: it answers "
                    "when the store cannot feed the models", f"$.ladder[{len(spec.ladder) - 1}].kind", source)


_SUBJECT = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")  # NATS: dot-separated tokens, no wildcards


def _check_drift(d: DriftSpec, source: str) -> None:
    for key in ("psi", "ks"):
        t: DriftThreshold = getattr(d, key)
        if t.clear > t.alert:
            raise _fail(f"clear ({t.clear}) must not exceed alert ({t.alert})", f"$.drift.{key}.clear",
                        source)
    if d.min_window > d.window:
        raise _fail(f"min_window ({d.min_window}) exceeds window ({d.window})", "$.drift.min_window", source)
    if len(set(d.detectors)) != len(d.detectors):
        raise _fail("a detector is listed twice", "$.drift.detectors", source)
    if d.window_interval is not None and d.window_interval <= 0:
        raise _fail("window_interval must be positive (or left out)", "$.drift.window_interval", source)
    for i, sink in enumerate(d.sinks):
        at = f"$.drift.sinks[{i}]"
        if sink.kind == "webhook" and not (sink.url or "").startswith(("http://", "https://")):
            raise _fail("a webhook sink needs an http:// or https:// url", f"{at}.url", source)
        if sink.kind == "nats":
            if not (sink.url or "").startswith(("nats://", "tls://")):
                raise _fail("a nats sink needs a nats:// url", f"{at}.url", source)
            if sink.subject is not None and not _SUBJECT.fullmatch(sink.subject):
                raise _fail(f"bad NATS subject {sink.subject!r}", f"{at}.subject", source)
        if sink.kind == "log" and (sink.url or sink.subject):
            raise _fail("a log sink takes no url or subject", at, source)
        if sink.timeout <= 0:
            raise _fail("a sink timeout must be positive", f"{at}.timeout", source)
