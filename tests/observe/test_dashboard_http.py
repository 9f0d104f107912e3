"""The dashboard on the server's HTTP listener: routes, the page, the data endpoint fed by the
app's side path, refusals; an App in-process on a loopback port (uvloop, as in ``tailguard serve``)."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from inthread import InThreadServer

from tailguard.serve.app import ServeConfig
from tailguard.serve.endpoints import Route, route

INFER = {"inputs": [{"name": "item", "shape": [1], "datatype": "BYTES", "data": ["a"]},
                    {"name": "price", "shape": [1], "datatype": "FP64", "data": [104.5]},
                    {"name": "size", "shape": [1], "datatype": "FP64", "data": [3.0]}]}


class Served(InThreadServer):
    """The in-process server, with a GET helper and HTTP inference traffic."""

    def get(self, path: str) -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        conn.close()
        return r.status, r.getheader("content-type", ""), body

    def infer(self, n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        for _ in range(n):
            conn.request("POST", "/v2/models/toy/infer", json.dumps(INFER).encode())
            r = conn.getresponse()
            r.read()
            assert r.status == 200
        conn.close()


@pytest.fixture(scope="module")
def served(toy_dir: Path) -> Iterator[Served]:
    s = Served(toy_dir, ServeConfig(dashboard_interval_s=0.05, dashboard_points=50, calibrate=False))
    yield s
    s.close()


def data_until(served: Served, ready: Any, query: str = "") -> dict[str, Any]:
    """Poll ``/dashboard/data`` until ``ready(data)`` holds (the side path samples on its own
    timer: this waits for a condition; the bound only turns a hang into a failure)."""
    end = time.monotonic() + 30
    while True:
        status, _, body = served.get("/dashboard/data" + query)
        assert status == 200
        data: dict[str, Any] = json.loads(body)
        if ready(data) or time.monotonic() > end:
            return data
        time.sleep(0.02)  # polling a condition, not racing anything


@pytest.mark.parametrize(("path", "expected"), [
    (b"/dashboard", Route.DASHBOARD), (b"/dashboard/data", Route.DASHBOARD_DATA),
    (b"/metrics", Route.METRICS), (b"/dashboard/", Route.NOT_FOUND), (b"/dashboard/data/x", Route.NOT_FOUND),
    (b"/dash", Route.NOT_FOUND),
])
def test_dashboard_routes(path: bytes, expected: Route) -> None:
    assert route(path)[0] is expected


def test_the_page_is_served_as_html(served: Served) -> None:
    status, ctype, body = served.get("/dashboard")
    assert status == 200 and ctype.startswith("text/html")
    assert b"<canvas>" in body and b"dashboard/data" in body


def test_data_shows_the_decisions_served(served: Served) -> None:
    served.infer(20)
    data = data_until(served, lambda d: sum(p["classes"]["normal"][0] for p in d["points"]) >= 20)
    info = data["info"]
    assert info["service"] == "toy" and info["state"] == "ready"
    assert info["classes"] == ["critical", "normal", "bulk"]
    assert info["versions"]["primary"] == "primary/1"
    assert sum(p["classes"]["normal"][0] for p in data["points"]) == 20  # the default class
    assert all(p["classes"]["critical"][0] == 0 for p in data["points"])


def test_since_returns_only_newer_points(served: Served) -> None:
    first = data_until(served, lambda d: len(d["points"]) >= 2)["points"]
    t = first[-1]["t"]
    later = data_until(served, lambda d: len(d["points"]) >= 1, f"?since={t}")["points"]
    assert later and all(p["t"] > t for p in later)


def test_a_bad_since_is_refused_with_its_code(served: Served) -> None:
    status, _, body = served.get("/dashboard/data?since=yesterday")
    assert status == 400
    assert json.loads(body)["code"] == "invalid_request" and json.loads(body)["field"] == "since"


def test_the_dashboard_can_be_switched_off(toy_dir: Path) -> None:
    s = Served(toy_dir, ServeConfig(dashboard_interval_s=0, calibrate=False))
    try:
        assert s.app.dashboard is None
        assert s.get("/dashboard/data")[0] == 404
        assert s.get("/dashboard")[0] == 404
    finally:
        s.close()
