"""The embedded dashboard: a stdlib HTTP thread serving what the owner thread's side path made.

The test thread is the owner (it predicts, advances the fake clock and runs the side path);
HTTP requests come from other threads, as a browser's would."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from toyservice import CTX

from tailguard import Service
from tailguard.observe.embedded import DashboardServer, serve_dashboard
from tailguard.testing import FakeClock


@pytest.fixture
def dash(service: Service) -> Iterator[DashboardServer]:
    d = serve_dashboard(service, metrics_wait_s=10.0)
    yield d
    d.close()


def get(d: DashboardServer, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(d.host, d.port, timeout=10)
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


def owner_until_done(service: Service, fut: Future[Any]) -> Any:
    """Be the owner thread until ``fut`` (an HTTP request on another thread) completes."""
    while not fut.done():
        service.run_side_path()
        wait([fut], timeout=0.005)
    return fut.result()


def test_the_handle_says_where_it_listens(dash: DashboardServer) -> None:
    assert dash.host == "127.0.0.1" and dash.port > 0
    assert dash.url == f"http://127.0.0.1:{dash.port}/dashboard"


def test_the_page_and_a_redirect_to_it(dash: DashboardServer) -> None:
    status, headers, body = get(dash, "/dashboard")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"<canvas>" in body
    status, headers, _ = get(dash, "/")
    assert status == 302 and headers["location"] == "/dashboard"
    assert get(dash, "/nope")[0] == 404


def test_data_is_what_the_owner_sampled(service: Service, clock: FakeClock, dash: DashboardServer) -> None:
    assert json.loads(get(dash, "/dashboard/data")[2])["points"] == []
    for i in range(6):
        service.engine.predict(f"k{i}", CTX)
    clock.advance(1.0)
    service.run_side_path()  # owner thread: folds the timings in and takes the point
    data = json.loads(get(dash, "/dashboard/data")[2])
    assert data["info"]["state"] == "embedded" and data["info"]["classes"] == []
    (point,) = data["points"]
    assert point["stages"]["total"][0] == 6 and point["rps"]["engine"] == pytest.approx(6.0)
    assert json.loads(get(dash, f"/dashboard/data?since={point['t']}")[2])["points"] == []


def test_a_bad_since_is_refused(dash: DashboardServer) -> None:
    status, _, body = get(dash, "/dashboard/data?since=soon")
    assert status == 400 and json.loads(body)["code"] == "invalid_request"


def test_metrics_are_rendered_on_the_owner_thread(service: Service, dash: DashboardServer) -> None:
    service.engine.predict("k", CTX)
    with ThreadPoolExecutor(1) as pool:
        status, headers, body = owner_until_done(service, pool.submit(get, dash, "/metrics"))
    assert status == 200 and headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["tailguard_engine_requests"].samples[0].value == 1
    assert dash.metrics.renders == 1


def test_metrics_render_in_steps_within_the_side_path_budget(service: Service, dash: DashboardServer) -> None:
    service.engine.predict("k", CTX)
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(get, dash, "/metrics")
        while not dash.metrics.waiting:  # the scrape reached the owner's queue
            wait([fut], timeout=0.001)
        calls = 0
        while not fut.done():
            service.run_side_path(1e-6)  # a 1 µs budget: one piece of the rendering a call
            calls += 1
            wait([fut], timeout=0.001)
        status, _, body = fut.result()
    assert status == 200 and calls > 3 and dash.metrics.renders == 1
    families = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"tailguard_stage_latency_seconds", "tailguard_engine_requests"} <= families


def test_metrics_say_why_when_the_owner_never_runs_its_side_path(service: Service) -> None:
    with serve_dashboard(service, metrics_wait_s=0.05) as d:
        status, _, body = get(d, "/metrics")
    assert status == 503 and b"run_side_path" in body


def test_close_stops_serving_and_detaches(service: Service) -> None:
    d = serve_dashboard(service)
    assert d.sampler in service.side_tasks and d.metrics in service.side_tasks
    d.close()
    assert d.sampler not in service.side_tasks and d.metrics not in service.side_tasks
    with pytest.raises(OSError):
        get(d, "/dashboard")
    d.close()  # idempotent
