"""Prometheus exposition of an engine: stage-latency histograms, ladder outcomes, models, and
with a shared online store (``[online] backend = "redis"``) its near-cache, link and breaker figures.

Usable embedded (``render(service)`` in any process that holds a loaded service) and by the
server's ``/metrics`` (which adds its own families).  Nothing is recorded for Prometheus on
the reply path: a ``prometheus_client`` collector reads, at scrape time, the engine's plain
integer counters and the latency recorder's numpy histograms (HdrHistogram's layout, 3
significant digits), and turns the latter into cumulative Prometheus buckets at fixed bounds
from 1 µs to 10 s.  A scrape drains the recorder first (side-path work, bounded by the ring).

``prometheus_client`` is in the ``serve`` extra; without it ``render`` says how to install it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from tailguard.decision import STAGES
from tailguard.features.store import NEVER
from tailguard.observe.latency import StageHistograms, bucket_index
from tailguard.observe.tap import FILLED, WRITTEN, DecisionTap

if TYPE_CHECKING:
    from tailguard.observe.ring import DecisionRing
    from tailguard.service import Service

__all__ = [
    "AGE_QUANTILES", "DECISION_AGES_WINDOW", "LATENCY_BUCKETS_S", "Rendering", "ServiceCollector",
    "all_histogram_buckets", "histogram_buckets", "render", "render_collector",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Upper bounds (seconds) of the latency histograms' buckets: 1-2-5 steps from 1 µs to 10 s.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    *(m * 10.0**e for e in range(-6, 1) for m in (1.0, 2.0, 5.0)),
    10.0,
)
_BOUNDS_NS = np.array([round(b * 1e9) for b in LATENCY_BUCKETS_S], dtype=np.int64)
# Every value in HDR bucket i is <= bound when i <= _LAST_INDEX[k]: a bound is exact below
# 2048 ns and falls inside a 1/1024-wide bucket above, so counts are attributed to the bucket
# holding the bound (an error of at most 0.1 % of the bound, HdrHistogram's own resolution).
_LAST_INDEX = bucket_index(_BOUNDS_NS.copy())


def histogram_buckets(h: StageHistograms, stage: int) -> tuple[list[tuple[str, float]], float]:
    """Cumulative ``(le, count)`` buckets (``+Inf`` last) and the sum in seconds of stage
    ``stage`` of ``h``, in Prometheus' histogram shape."""
    return all_histogram_buckets(h)[stage]


def all_histogram_buckets(h: StageHistograms) -> list[tuple[list[tuple[str, float]], float]]:
    """``histogram_buckets`` of every stage of ``h``, from one pass over its counts (a
    scrape's largest piece of work: five stages of ~27k HDR buckets each)."""
    # Counts per span between consecutive bounds, then their running sums: the cumulative
    # count at each bound without a running sum over every HDR bucket.
    spans = np.add.reduceat(h.counts, _SPAN_STARTS, axis=1)
    cum = np.cumsum(spans, axis=1).tolist()
    les = _LES
    return [([*zip(les, map(float, row[:-1]), strict=True), ("+Inf", float(row[-1]))], h.sum_ns[i] / 1e9)
            for i, row in enumerate(cum)]


def _le(bound_s: float) -> str:
    return f"{bound_s:.6g}"


_LES = [_le(b) for b in LATENCY_BUCKETS_S]
# Span k of a stage's counts runs from _SPAN_STARTS[k] up to the next start: span k < n ends
# at _LAST_INDEX[k] (inclusive); the last span holds everything above the highest bound.
_SPAN_STARTS = np.concatenate(([0], _LAST_INDEX + 1)).astype(np.intp)


class ServiceCollector:
    """A ``prometheus_client`` collector for one loaded service (engine owner thread: call
    ``collect`` where the engine is owned, e.g. from the server's loop)."""

    def __init__(self, service: Service, labels: dict[str, str] | None = None) -> None:
        self.service = service
        self.labels = dict(labels or {})

    def collect(self) -> Iterator[Any]:
        """The metric families (called by the registry at scrape time)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        svc, eng = self.service, self.service.engine
        names, values = list(self.labels), list(self.labels.values())
        lat = HistogramMetricFamily(
            "tailguard_stage_latency_seconds",
            "Engine stage latency (ingest, features, inference, delivery, total) per call kind.",
            labels=["stage", "call", *names],
        )
        rec = svc.latency
        if rec is not None:
            rec.drain()
            for call, hists in (("predict", rec.one), ("predict_batch", rec.batch)):
                for stage, (buckets, total) in zip(STAGES, all_histogram_buckets(hists), strict=False):
                    lat.add_metric([stage, call, *values], buckets, total)
        yield lat
        stats = eng.statistics()
        for key, doc in (
            ("requests", "Engine calls answered (predict and predict_batch)."),
            ("batch_rows", "Rows scored by predict_batch."),
            ("invalid", "Requests refused as invalid."),
            ("unknown_entities", "Rows for entities the store has never seen (defaults served)."),
            ("stale", "Rows served with a feature view older than its TTL."),
            ("deadline_missed", "Decisions formed after their deadline."),
            ("features_unavailable", "Rows the shared online store could not feed in time (ladder used)."),
            ("features_unconfirmed", "Rows served cached values whose freshness the link could not prove."),
        ):
            c = CounterMetricFamily(f"tailguard_engine_{key}", doc, labels=names)
            c.add_metric(values, stats[key])
            yield c
        rungs = CounterMetricFamily("tailguard_rung", "Ladder outcomes per rung.",
                                    labels=["rung", "outcome", *names])
        expected = GaugeMetricFamily("tailguard_rung_expected_seconds",
                                     "A model rung's expected time for one row (mean + 4 deviations).",
                                     labels=["rung", *names])
        for rung, r in stats["rungs"].items():
            for outcome in ("answered", "skipped_budget", "failed", "timed_out"):
                rungs.add_metric([rung, outcome, *values], r[outcome])
            if r["expected_us_batch1"] is not None:
                expected.add_metric([rung, *values], r["expected_us_batch1"] / 1e6)
        yield rungs
        yield expected
        models = GaugeMetricFamily("tailguard_model_info", "Loaded model versions (1 per version).",
                                   labels=["model", "version", "content_hash", "runtime", *names])
        for name, m in svc.models.items():
            models.add_metric([name, m.manifest.version, m.manifest.content_hash[:16],
                               getattr(m.runtime, "kind", ""), *values], 1)
        yield models
        views = GaugeMetricFamily("tailguard_feature_view_info", "Live feature view versions.",
                                  labels=["view", "version", *names])
        for name, version in svc.feature_versions.items():
            views.add_metric([name, version, *values], 1)
        yield views
        yield from _feature_ages(svc, names, values)
        yield from _online_store(svc, names, values)
        yield from _breakers(svc, names, values)
        yield from _drift_scores(svc, names, values)
        yield from _rollout(svc, names, values)


#: Quantiles of the stored feature rows' ages exported per view.
AGE_QUANTILES = (0.5, 0.9, 0.99, 1.0)


def _feature_ages(svc: Service, names: list[str], values: list[str]) -> Iterator[Any]:
    """Per stored view: quantiles of the age of every entity's row (time since its last write)
    and how many entities have one — computed at scrape time over the store's write times.
    With a shared online store: quantiles of the ages the last decisions saw (``_decision_ages``)."""
    from prometheus_client.core import GaugeMetricFamily

    ages = GaugeMetricFamily("tailguard_feature_age_seconds",
                             "Age of the stored feature rows per view (time since last write), by quantile "
                             "over entities (1 = the oldest); with a shared online store, of the values the "
                             "last decisions read, when they read them.", labels=["view", "quantile", *names])
    rows = GaugeMetricFamily("tailguard_feature_rows", "Entities with a written row per stored view.",
                             labels=["view", *names])
    if svc.online is not None:
        # The remote store's key index holds no values (they live in Redis): the ages are those
        # of the values the last decisions read, at the time they read them, when a decision tap
        # keeps them (an audit log or drift monitor is attached); no rows are counted.
        tap, ring = svc.tap, svc.ring  # never made here: a scrape must not add a hook
        recent = _decision_ages(tap) if tap is not None else _ring_ages(ring) if ring is not None else {}
        if recent:
            for name, a in recent.items():
                if len(a):
                    qs = np.quantile(a, AGE_QUANTILES) / 1e9
                    for q, v in zip(AGE_QUANTILES, qs.tolist(), strict=True):
                        ages.add_metric([name, f"{q:g}", *values], v)
        yield ages
        yield rows
        return
    for name, view in svc.views.items():
        if view.is_request:
            continue  # a request-time view has no stored rows
        a = svc.store.view_ages_ns(name)
        rows.add_metric([name, *values], len(a))
        if len(a):
            qs = np.quantile(a, AGE_QUANTILES) / 1e9
            for q, v in zip(AGE_QUANTILES, qs.tolist(), strict=True):
                ages.add_metric([name, f"{q:g}", *values], v)
    yield ages
    yield rows


#: Decisions (tap entries, single or batch) whose values' ages a scrape reads with a remote store.
DECISION_AGES_WINDOW = 1024


def _decision_ages(tap: DecisionTap, window: int = DECISION_AGES_WINDOW) -> dict[str, np.ndarray]:
    """Per stored view, the ages (ns, at decision time: fill time minus write time) of the values
    the last ``window`` decisions the tap kept read; unknown or never-written rows left out.
    Reads the ring without a reader (owner thread; slots below ``head`` hold whole entries)."""
    hi = tap.head
    slots = [i & tap.mask for i in range(max(0, hi - min(window, tap.capacity)), hi)]
    names = tap.engine.assembler.stored_views
    if not slots or not names:
        return {name: np.empty(0, dtype=np.int64) for name in names}
    kept = [e for e in (tap.slots[s] for s in slots) if e is not None]  # released: gone
    chunks = [e[WRITTEN] for e in kept]
    w_all = np.frombuffer(b"".join(chunks), dtype=np.int64).reshape(-1, len(names))
    rows_per = np.array([len(c) for c in chunks], dtype=np.int64) // (8 * len(names))
    f_all = np.repeat(np.array([e[FILLED] for e in kept], dtype=np.int64), rows_per)
    return _ages_by_view(names, w_all, f_all)


def _ages_by_view(names: tuple[str, ...], written: np.ndarray, filled: np.ndarray) -> dict[str, np.ndarray]:
    """Per view (column of ``written``, one row per decision row), fill time minus write time
    of the rows ever written."""
    out = {}
    for j, name in enumerate(names):
        col = written[:, j]
        known = col != NEVER
        out[name] = filled[known] - col[known]
    return out


def _ring_ages(ring: DecisionRing, window: int = DECISION_AGES_WINDOW) -> dict[str, np.ndarray]:
    """``_decision_ages`` of the last ``window`` records of a ``DecisionRing`` (a batch's rows
    each count; owner thread: the writer is not running)."""
    hi = ring.head
    recs = ring.reader().read(max(0, hi - min(window, ring.capacity)), hi)
    names = ring.engine.assembler.stored_views
    return _ages_by_view(names, recs["written"].reshape(len(recs), len(names)), recs["filled_ns"])


#: Near-cache counters exported as ``tailguard_online_cache_<name>_total``.
_CACHE_COUNTERS = (
    ("hits", "Entity reads served from the near-cache."),
    ("misses", "Entity keys fetched from Redis (near-cache misses)."),
    ("fills", "Entries stored in the near-cache after a fetch."),
    ("fills_refused", "Fetched entries not stored: invalidated while the fetch was in flight."),
    ("invalidations", "Keys invalidated by pushes or by this process's own writes."),
    ("evictions", "Entries evicted by CLOCK beyond the capacity."),
    ("clears", "Whole-cache clears (each reconnect of the invalidation link)."),
    ("unconfirmed", "Entity reads served from the cache without proof of freshness (eventual views)."),
    ("unavailable", "Reads the cache could not serve while Redis could not be read."),
)


def _online_store(svc: Service, names: list[str], values: list[str]) -> Iterator[Any]:
    """The shared online store's figures (``[online] backend = "redis"`` only): round trips and
    errors, near-cache entries, hits and misses, and the invalidation link's state."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    if svc.online is None:
        return
    stats = svc.online.statistics()
    cache: dict[str, Any] = stats.get("near_cache", {})
    link: dict[str, Any] = stats.get("link", {})

    def counter(name: str, doc: str, value: Any) -> Any:
        c = CounterMetricFamily(name, doc, labels=names)
        c.add_metric(values, float(value))
        return c

    def gauge(name: str, doc: str, value: Any) -> Any:
        g = GaugeMetricFamily(name, doc, labels=names)
        g.add_metric(values, float(value))
        return g

    for key, doc in (("reads", "Read round trips to Redis."), ("keys_read", "Entity keys read from Redis."),
                     ("writes", "Values written to Redis by this process."),
                     ("errors", "Redis calls that failed (timeouts, refused or lost connections).")):
        if key in stats:
            yield counter(f"tailguard_online_{key}", doc, stats[key])
    for key, doc in _CACHE_COUNTERS:
        if key in cache:
            yield counter(f"tailguard_online_cache_{key}", doc, cache[key])
    if "entries" in cache:
        yield gauge("tailguard_online_cache_entries", "Entities held in the near-cache.", cache["entries"])
        yield gauge("tailguard_online_cache_capacity", "Entities the near-cache may hold.", cache["capacity"])
    if "link_up" in cache:
        yield gauge("tailguard_online_link_up", "1 while the invalidation link is up (cached values "
                    "proven fresh), else 0.", 1 if cache["link_up"] else 0)
    for key, doc in (("connects", "Times the invalidation link (re)subscribed."),
                     ("failures", "Times the invalidation link failed."),
                     ("messages", "Invalidation messages received.")):
        if key in link:
            yield counter(f"tailguard_online_link_{key}", doc, link[key])


#: Breaker counters exported as ``tailguard_breaker_<name>_total{breaker=...}``.
_BREAKER_COUNTERS = (
    ("short_circuited", "Calls refused by the breaker without touching the dependency."),
    ("opens", "Times the breaker opened."),
    ("failures", "Calls through the breaker that failed (unreachable, timed out)."),
    ("slow", "Calls through the breaker slower than its slow-call threshold."),
)


def _breakers(svc: Service, names: list[str], values: list[str]) -> Iterator[Any]:
    """The circuit breakers' state (0 closed, 1 half-open, 2 open; a breaker whose open period has
    passed shows open until the next call tries) and counters: the online store's (``online``)
    and each model rung's (``model:<rung>``)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    breakers = [b for b in (getattr(svc.engine.remote, "breaker", None),
                            *(r.breaker for r in svc.engine.rungs)) if b is not None]
    if not breakers:
        return
    labels = ["breaker", *names]
    state = GaugeMetricFamily("tailguard_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, "
                              "2 open.", labels=labels)
    for b in breakers:
        state.add_metric([b.name, *values], float(int(b.state)))
    yield state
    for key, doc in _BREAKER_COUNTERS:
        c = CounterMetricFamily(f"tailguard_breaker_{key}", doc, labels=labels)
        for b in breakers:
            c.add_metric([b.name, *values], float(getattr(b, key)))
        yield c


def _drift_scores(svc: Service, names: list[str], values: list[str]) -> Iterator[Any]:
    """Latest drift scores of any attached side task that reports them (``drift_scores()``:
    ``{"<metric>:<signal>": value}``, e.g. ``psi:spread``)."""
    from prometheus_client.core import GaugeMetricFamily

    fam = GaugeMetricFamily("tailguard_drift_score", "Latest drift score per signal (PSI, KS, detectors).",
                            labels=["metric", "signal", *names])
    for task in svc.side_tasks:
        scores = getattr(task, "drift_scores", None)
        if scores is None:
            continue
        for key, v in scores().items():
            metric, _, signal = key.partition(":")
            fam.add_metric([metric, signal, *values], float(v))
    yield fam


#: ``tailguard_rollout_phase`` values.
ROLLOUT_PHASES = {"deployed": 0, "active": 1, "promoted": 2, "rolled_back": 3}


def _rollout(svc: Service, names: list[str], values: list[str]) -> Iterator[Any]:
    """The newest attached rollout (``rollout_summary()``: a ``Rollout`` or a goal follower):
    its phase, stage and share, decisions routed to each version, rollbacks, the goal revision."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    summary = next((f() for t in reversed(svc.side_tasks)
                    if (f := getattr(t, "rollout_summary", None)) is not None), None)
    if summary is None:
        return
    if "phase" in summary:
        labels = ["model", "candidate", *names]
        row = [str(summary["model"]), str(summary["candidate"]), *values]
        for key, doc, value in (
            ("phase", "Rollout phase: 0 deployed, 1 active, 2 promoted, 3 rolled back.",
             ROLLOUT_PHASES.get(summary["phase"], -1)),
            ("stage", "Index of the rollout plan's current stage.", summary["stage"]),
            ("share", "Share of routing keys the current stage sends to the candidate.", summary["share"]),
        ):
            g = GaugeMetricFamily(f"tailguard_rollout_{key}", doc, labels=labels)
            g.add_metric(row, float(value))
            yield g
        c = CounterMetricFamily("tailguard_rollout_decisions", "Decisions while the rollout routed traffic, "
                                "per version that answered.", labels=["version", *labels])
        c.add_metric(["candidate", *row], float(summary["candidate_requests"]))
        c.add_metric(["stable", *row], float(summary["requests"] - summary["candidate_requests"]))
        yield c
    if summary.get("goal_revision") is not None:
        g = GaugeMetricFamily("tailguard_rollout_goal_revision", "Revision of the rollout goal applied here.",
                              labels=names)
        g.add_metric(values, float(summary["goal_revision"]))
        yield g


def render(service: Service, labels: dict[str, str] | None = None) -> bytes:
    """The Prometheus text exposition of ``service`` (for an embedded engine's own endpoint
    or a file exporter)."""
    return render_collector(ServiceCollector(service, labels))


def _client() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(
            "Prometheus metrics need prometheus-client: pip install 'tailguard[serve]'"
        ) from exc
    return prometheus_client


def render_collector(collector: Any) -> bytes:
    """The Prometheus text exposition of one collector, in a registry of its own."""
    client = _client()
    registry = client.CollectorRegistry(auto_describe=False)
    registry.register(collector)
    out: bytes = client.generate_latest(registry)
    return out


def _pieces(family: Any, metric: Any, size: int) -> list[tuple[Any, bool]]:
    """``family`` as pieces of at most ``size`` samples, last piece first (popped from the
    end), each with whether it keeps the family's header lines (the first piece only)."""
    samples = family.samples
    if len(samples) <= size:
        return [(family, True)]
    out = []
    for start in range(0, len(samples), size):
        piece = metric(family.name, family.documentation, family.type, family.unit)
        piece.samples = samples[start:start + size]
        out.append((piece, start == 0))
    return out[::-1]


class _One:
    """One metric family as a collector (what ``generate_latest`` formats)."""

    __slots__ = ("family",)

    def __init__(self, family: Any) -> None:
        self.family = family

    def collect(self) -> list[Any]:
        return [self.family]


class Rendering:
    """One exposition of ``collector`` made in steps, for a process that must not stall.

    Rendered at once, the trading example's ~300 samples hold the caller 2-3 ms (and ~40 ms
    the first time), which on a server's event loop is a stall every scrape, under traffic.
    ``step(budget_ns)`` asks the collector for its next families (its generator builds each
    when asked) and formats them with the client library, until ``budget_ns`` has passed, at
    least one family; it returns the whole text once the last family is done, else None.  The
    text is what ``render_collector`` gives, family for family; families are read at slightly
    different moments (the steps of one scrape are milliseconds apart)."""

    #: Samples formatted at most per piece: a family with more (the latency histograms: ~250)
    #: is formatted in pieces, its header lines kept from the first piece only.
    SAMPLES_PER_PIECE = 40

    def __init__(self, collector: Any) -> None:
        client = _client()
        self._format, self._metric = client.generate_latest, client.Metric
        self._families = iter(collector.collect())
        self._pieces: list[Any] = []  # what is left of the family being formatted
        self._parts: list[bytes] = []
        self.steps = 0
        #: The longest step so far, ns (what the caller was held at most).
        self.max_step_ns = 0

    def step(self, budget_ns: int) -> bytes | None:
        """Format families (or pieces of a large one) for about ``budget_ns``, at least one;
        the text when finished."""
        now = time.perf_counter_ns
        t0 = now()
        end = t0 + budget_ns
        try:
            while True:
                if not self._pieces:
                    family = next(self._families, None)
                    if family is None:
                        return b"".join(self._parts)
                    self._pieces = _pieces(family, self._metric, self.SAMPLES_PER_PIECE)
                piece, headed = self._pieces.pop()
                text = self._format(_One(piece))
                if not headed:  # a later piece of a family: its sample lines only
                    text = text[text.index(b"\n", text.index(b"# TYPE ")) + 1:]
                self._parts.append(text)
                if now() >= end:
                    return None
        finally:
            self.steps += 1
            self.max_step_ns = max(self.max_step_ns, now() - t0)
