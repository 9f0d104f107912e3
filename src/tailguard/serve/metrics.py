"""``/metrics``: the serving process's counters in Prometheus text format.

Nothing is recorded for Prometheus on the reply path: the dispatcher, scheduler and engine
keep plain integer counters, and a custom ``prometheus_client`` collector reads them when
``/metrics`` is scraped (the exposition format comes from the library).  Stage latencies are
exported as quantile gauges from the engine's HDR histograms (aggregated at scrape time, off
the reply path).

One process, one view: with ``--workers N`` each scrape reports the worker that answered it
(its ``worker`` label says which).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tailguard.serve.oip import error_body

if TYPE_CHECKING:
    from tailguard.serve.app import App
    from tailguard.serve.exchange import Exchange

__all__ = ["Scrapes", "render"]

_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _collector(app: App) -> Any:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    from tailguard.observe.prometheus import ServiceCollector

    engine_collector = ServiceCollector(app.service, {"worker": str(os.getpid())})

    class AppCollector:
        def collect(self) -> Iterator[Any]:
            w = str(os.getpid())
            stats = app.statistics()
            d = stats["dispatcher"]
            info = GaugeMetricFamily("tailguard_info", "Served service and active primary model version.",
                                     labels=["service", "model_version", "worker"])
            info.add_metric([app.welcome.service, app.welcome.model_version, w], 1)
            yield info
            state = GaugeMetricFamily("tailguard_state", "Lifecycle state (1 for the current one).",
                                      labels=["state", "worker"])
            for s in ("starting", "ready", "draining", "stopped"):
                state.add_metric([s, w], 1 if stats["state"] == s else 0)
            yield state
            yield _gauge("tailguard_connections", "Open client connections.", stats["connections"], w)
            yield _gauge("tailguard_in_flight", "Requests admitted and not yet answered.", d["in_flight"], w)
            for name, key, doc in (
                ("tailguard_requests", "submitted", "Requests received by the dispatcher."),
                ("tailguard_answered", "answered", "Requests answered with a decision."),
                ("tailguard_late", "late", "Decisions delivered after their deadline."),
                ("tailguard_abandoned", "abandoned", "Requests whose client left before the reply."),
            ):
                c = CounterMetricFamily(name, doc, labels=["worker"])
                c.add_metric([w], d[key])
                yield c
            errors = CounterMetricFamily("tailguard_errors", "Non-OK replies by status code.",
                                         labels=["code", "worker"])
            for code, n in sorted(d["errors"].items()):
                errors.add_metric([code, w], n)
            yield errors
            yield from _scheduler_families(d["scheduler"], w)
            yield from engine_collector.collect()
            yield _server_latency(app, w)

    return AppCollector()


def _server_latency(app: App, worker: str) -> Any:
    """Per class: time queued, the engine's stages and the server's total per decision, as
    histograms (the dispatcher's recorders, drained here and on the side path)."""
    from prometheus_client.core import HistogramMetricFamily

    from tailguard.observe.prometheus import all_histogram_buckets

    fam = HistogramMetricFamily("tailguard_server_latency_seconds",
                                "Per decision, by class: queued, engine stages and server total.",
                                labels=["class", "stage", "worker"])
    d = app.dispatcher
    for cls, rec in zip(d.class_names, d.latency, strict=True):
        rec.drain()
        for stage, (buckets, total) in zip(rec.stages, all_histogram_buckets(rec.one), strict=False):
            fam.add_metric([cls, stage, worker], buckets, total)
    return fam


def _gauge(name: str, doc: str, value: float, worker: str) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    g = GaugeMetricFamily(name, doc, labels=["worker"])
    g.add_metric([worker], value)
    return g


def _scheduler_families(s: dict[str, Any], worker: str) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    depth = GaugeMetricFamily("tailguard_queue_depth", "Requests waiting per priority class.",
                              labels=["class", "worker"])
    for cls, n in s.get("queued", {}).items():
        depth.add_metric([cls, worker], n)
    yield depth
    events = CounterMetricFamily(
        "tailguard_scheduler_events", "Rejects, sheds and degrades by reason and class.",
        labels=["outcome", "reason", "class", "worker"],
    )
    for outcome in ("rejected", "shed", "degraded"):
        for reason, per_class in s.get(outcome, {}).items():
            for cls, n in per_class.items():
                events.add_metric([outcome, reason, cls, worker], n)
    yield events
    admitted = CounterMetricFamily("tailguard_admitted", "Requests admitted by the scheduler.",
                                   labels=["class", "worker"])
    for cls, n in s.get("admitted", {}).items():
        admitted.add_metric([cls, worker], n)
    yield admitted
    door = s.get("door")
    if door is not None:
        util = GaugeMetricFamily("tailguard_door_utilization",
                                 "Smoothed share of time used by each class's admitted work.",
                                 labels=["class", "worker"])
        stretch = GaugeMetricFamily("tailguard_door_wait_stretch",
                                    "Factor admission applies to a class's queued work (load above it).",
                                    labels=["class", "worker"])
        for cls, u in door["utilization"].items():
            util.add_metric([cls, worker], u)
            stretch.add_metric([cls, worker], door["wait_stretch"][cls])
        yield util
        yield stretch
        g = GaugeMetricFamily("tailguard_ingress_seconds",
                              "Smoothed cost of reading and admitting one request.", labels=["worker"])
        g.add_metric([worker], door["ingress_us"] / 1e6)
        yield g
    sizes = s.get("batch_sizes")
    if sizes is not None:
        from prometheus_client.core import HistogramMetricFamily

        # The scheduler counts batches per power-of-two bucket of jobs (``{upper: n}``).
        hist = HistogramMetricFamily("tailguard_batch_jobs", "Jobs per micro-batch (power-of-two buckets).",
                                     labels=["worker"])
        cum, buckets = 0, []
        for k in range(13):
            cum += sizes.get(1 << k, 0)
            buckets.append((str(1 << k), float(cum)))
        buckets.append(("+Inf", float(sum(sizes.values()))))
        hist.add_metric([worker], buckets, float(sum(s.get("batched", {}).values())))
        yield hist
    for name, key, doc in (
        ("tailguard_batches", "batches", "Micro-batches run."),
        ("tailguard_starvation_guard", "starvation_guard",
         "Times a lower class was served ahead of a higher one by the starvation guard."),
    ):
        if key in s:
            c = CounterMetricFamily(name, doc, labels=["worker"])
            c.add_metric([worker], s[key])
            yield c


def _app_collector(app: App) -> Any:
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise ImportError("/metrics needs prometheus-client: pip install 'tailguard[serve]'") from exc
    if app.metrics_registry is None:
        app.metrics_registry = _collector(app)
    return app.metrics_registry


def render(app: App) -> tuple[bytes, str]:
    """The Prometheus exposition of ``app`` at once (body, content type): startup warm-up and
    tests; a scrape is answered in steps (``Scrapes``)."""
    from prometheus_client import generate_latest

    return generate_latest(_app_collector(app)), _CONTENT_TYPE


class Scrapes:
    """``/metrics`` answered in steps on the event loop (``observe.prometheus.Rendering``):
    each step formats families for at most ``step_ns`` (one family at least), then gives the
    loop back, so requests that arrived meanwhile are read and answered between steps instead
    of waiting 2-3 ms behind one rendering.  Scrapes that arrive while a rendering runs get its
    text too.  A failing collector answers every waiting scrape 500 (``internal``)."""

    def __init__(self, app: App, step_ns: int = 200_000) -> None:
        self.app = app
        self.step_ns = step_ns
        self.waiting: list[Exchange] = []
        self.rendering: Any = None
        self.renderings = 0
        #: The longest step of any rendering, ns: what a scrape held the event loop at most.
        self.max_step_ns = 0

    def request(self, ex: Exchange) -> None:
        """Answer ``ex`` once the current (or a new) rendering is done."""
        from tailguard.observe.prometheus import Rendering

        self.waiting.append(ex)
        if self.rendering is None:
            self.rendering = Rendering(_app_collector(self.app))
            self._next()

    def _step(self) -> None:
        r = self.rendering
        try:
            body = r.step(self.step_ns)
        except Exception as exc:  # a bug in a collector costs the scrape, never the server
            self._answer(500, error_body("internal", f"/metrics failed: {type(exc).__name__}: {exc}"),
                         b"application/json")
            return
        finally:
            self.max_step_ns = max(self.max_step_ns, r.max_step_ns)
        if body is None:
            self._next()
            return
        self.renderings += 1
        self._answer(200, body, _CONTENT_TYPE.encode("latin-1"))

    def _next(self) -> None:
        # A timer due now, not call_soon: asyncio runs a turn's timers after the I/O callbacks
        # of that turn's poll, but call_soon callbacks before them; a request that arrived
        # during a step is then read before the next step, not after it.
        self.app.loop.call_later(0, self._step)

    def _answer(self, code: int, body: bytes, content_type: bytes) -> None:
        waiting, self.waiting, self.rendering = self.waiting, [], None
        for ex in waiting:
            ex.answer(code, body, content_type=content_type)
            ex.flush()
