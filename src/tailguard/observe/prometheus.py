"""Prometheus exposition of an engine: stage-latency histograms, ladder outcomes, models.

Usable embedded (``render(service)`` in any process that holds a loaded service) and by the
server's ``/metrics`` (which adds its own families).  Nothing is recorded for Prometheus on
the reply path: a ``prometheus_client`` collector reads, at scrape time, the engine's plain
integer counters and the latency recorder's numpy histograms (HdrHistogram's layout, 3
significant digits), and turns the latter into cumulative Prometheus buckets at fixed bounds
from 1 µs to 10 s.  A scrape drains the recorder first (side-path work, bounded by the ring).

``prometheus_client`` is in the ``serve`` extra; without it ``render`` says how to install it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from tailguard.decision import STAGES
from tailguard.observe.latency import StageHistograms, bucket_index

if TYPE_CHECKING:
    from tailguard.service import Service

__all__ = ["AGE_QUANTILES", "LATENCY_BUCKETS_S", "ServiceCollector", "histogram_buckets", "render"]

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
    counts = h.counts[stage]
    cum = np.cumsum(counts)
    total = int(cum[-1]) if len(cum) else 0
    at = cum[_LAST_INDEX].tolist()
    buckets = [(_le(b), float(n)) for b, n in zip(LATENCY_BUCKETS_S, at, strict=True)]
    buckets.append(("+Inf", float(total)))
    return buckets, h.sum_ns[stage] / 1e9


def _le(bound_s: float) -> str:
    return f"{bound_s:.6g}"


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
                for i, stage in enumerate(STAGES):
                    buckets, total = histogram_buckets(hists, i)
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
        yield from _drift_scores(svc, names, values)


#: Quantiles of the stored feature rows' ages exported per view.
AGE_QUANTILES = (0.5, 0.9, 0.99, 1.0)


def _feature_ages(svc: Service, names: list[str], values: list[str]) -> Iterator[Any]:
    """Per stored view: quantiles of the age of every entity's row (time since its last write)
    and how many entities have one — computed at scrape time over the store's write times."""
    from prometheus_client.core import GaugeMetricFamily

    ages = GaugeMetricFamily("tailguard_feature_age_seconds",
                             "Age of the stored feature rows per view (time since last write), by quantile "
                             "over entities (1 = the oldest).", labels=["view", "quantile", *names])
    rows = GaugeMetricFamily("tailguard_feature_rows", "Entities with a written row per stored view.",
                             labels=["view", *names])
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


def render(service: Service, labels: dict[str, str] | None = None) -> bytes:
    """The Prometheus text exposition of ``service`` (for an embedded engine's own endpoint
    or a file exporter)."""
    try:
        from prometheus_client import CollectorRegistry, generate_latest
    except ImportError as exc:
        raise ImportError(
            "Prometheus metrics need prometheus-client: pip install 'tailguard[serve]'"
        ) from exc
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(service, labels))
    out: bytes = generate_latest(registry)
    return out
