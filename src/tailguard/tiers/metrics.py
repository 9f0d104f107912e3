"""Prometheus exposition of a tiered engine: decisions per tier and reason, remote calls, the
round-trip estimate and the remote breaker.

Like ``observe.prometheus.ServiceCollector``, nothing is recorded for Prometheus on the reply
path: ``TiersCollector`` reads the tiered engine's plain integer counters at scrape time.
Register it in the registry that serves the edge process's metrics (beside a
``ServiceCollector`` for the edge service itself)::

    registry.register(TiersCollector(tiered))

The family names start with ``tailguard_tier_`` (the breaker's too: ``tailguard_breaker_*``
is the service collector's, for the online store's breaker).  ``prometheus_client`` is in the
``serve`` extra.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tailguard.tiers.decision import Tier, TierReason

if TYPE_CHECKING:
    from tailguard.tiers.rule import TierRule

__all__ = ["TiersCollector", "render_tiers"]


class TiersCollector:
    """A ``prometheus_client`` collector for one ``TieredEngine`` or ``AsyncTieredEngine``
    (read on the scraping thread: the counters are plain integers, a scrape may see them a
    decision apart)."""

    def __init__(self, tiered: TierRule, labels: dict[str, str] | None = None) -> None:
        self.tiered = tiered
        self.labels = dict(labels or {})

    def collect(self) -> Iterator[Any]:
        """The metric families (called by the registry at scrape time)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        t = self.tiered
        names, values = list(self.labels), list(self.labels.values())
        fam = CounterMetricFamily("tailguard_tier_decisions",
                                  "Tiered decisions by answering tier and reason.",
                                  labels=["tier", "reason", *names])
        for reason, n in list(t.counts.items()):
            tier = Tier.REMOTE if reason is TierReason.REMOTE_USED else Tier.EDGE
            fam.add_metric([str(tier), str(reason), *values], float(n))
        yield fam
        for key, doc in (
            ("remote_started", "Remote tier calls sent (the budget fitted and the breaker allowed)."),
            ("remote_timeouts", "Remote calls that ended in the client timeout (the deadline)."),
            ("remote_late_replies", "Remote replies that arrived after the deadline (dropped)."),
        ):
            c = CounterMetricFamily(f"tailguard_tier_{key}", doc, labels=names)
            c.add_metric(values, float(getattr(t, key)))
            yield c
        errors = CounterMetricFamily("tailguard_tier_remote_errors", "Failed remote calls by error code.",
                                     labels=["code", *names])
        for code, n in list(t.remote_errors.items()):
            errors.add_metric([code, *values], float(n))
        yield errors
        est = GaugeMetricFamily("tailguard_tier_remote_estimate_seconds",
                                "The remote round trip planned for (a high quantile of recent ones).",
                                labels=names)
        est.add_metric(values, t.estimate.estimate_ns(t.clock.now_ns()) / 1e9)
        yield est
        b = t.breaker
        state = GaugeMetricFamily("tailguard_tier_breaker_state",
                                  "Remote tier breaker state: 0 closed, 1 half-open, 2 open.", labels=names)
        state.add_metric(values, float(int(b.state)))
        yield state
        for key in ("short_circuited", "opens", "failures"):
            c = CounterMetricFamily(f"tailguard_tier_breaker_{key}", f"Remote tier breaker: {key}.",
                                    labels=names)
            c.add_metric(values, float(getattr(b, key)))
            yield c


def render_tiers(tiered: TierRule, labels: dict[str, str] | None = None) -> bytes:
    """The Prometheus text exposition of ``tiered`` alone."""
    from tailguard.observe.prometheus import render_collector

    return render_collector(TiersCollector(tiered, labels))
