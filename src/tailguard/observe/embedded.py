"""The dashboard and ``/metrics`` for an embedded engine: a stdlib HTTP server on a daemon thread.

``serve_dashboard(service)`` attaches a ``DashboardSampler`` and a ``MetricsRelay`` to the
service's side path and serves, from a ``ThreadingHTTPServer`` on its own daemon thread:

=====================  ===========================================================
/dashboard             the live page (self-contained HTML)
/dashboard/data        the sampler's points as JSON (``?since=T``: only newer ones)
/metrics               Prometheus text of the service (``observe.prometheus``)
=====================  ===========================================================

The engine stays single-threaded: everything the HTTP thread serves is produced on the owner
thread, by side tasks that run when the owner calls ``service.run_side_path``.  The dashboard
data is published there each interval; a ``/metrics`` scrape asks the owner for a rendering and
waits (up to ``metrics_wait_s``) until the side-path calls that follow have made it, in
budgeted steps.  An owner loop that
never calls ``run_side_path`` gets an empty dashboard and 503 from ``/metrics``, saying why.
"""

from __future__ import annotations

import collections
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import msgspec

from tailguard.errors import ValidationError
from tailguard.observe.dashboard import DashboardSampler, dashboard_page, parse_since

if TYPE_CHECKING:
    from tailguard.service import Service

__all__ = ["DashboardServer", "MetricsRelay", "serve_dashboard"]

_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"


class MetricsRelay:
    """Renders the service's Prometheus text on the owner thread when another thread asks.

    ``request`` (any thread) queues an event and waits for it; ``drain`` (owner thread, a
    SideTask) renders for every waiting request and wakes them, in steps that keep to the
    side path's budget (``observe.prometheus.Rendering``: a whole rendering holds the owner
    2-3 ms).  No scrape, no work.
    """

    def __init__(self, service: Service) -> None:
        self.service = service
        self._waiting: collections.deque[threading.Event] = collections.deque()
        self._body = b""
        self._error = ""
        self.closed = False
        self.renders = 0
        self._rendering: Any = None

    @property
    def waiting(self) -> int:
        """Scrapes waiting for a rendering now."""
        return len(self._waiting)

    def request(self, timeout_s: float) -> tuple[bytes, str] | None:
        """A fresh exposition ``(body, error)`` rendered by the owner thread, or None when
        the owner did not run its side path within ``timeout_s``.  Any thread but the owner."""
        if self.closed:
            return None
        ready = threading.Event()
        self._waiting.append(ready)  # deque.append is atomic: no lock shared with the owner
        if not ready.wait(timeout_s):
            return None
        return self._body, self._error

    def drain(self, budget_ns: int | None = None) -> int:
        """Render for whoever waits (owner thread), for about ``budget_ns`` (None: the whole
        rendering now); returns 1 when a rendering finished and its waiters were woken."""
        if not self._waiting:
            return 0
        from tailguard.observe.prometheus import Rendering, ServiceCollector

        try:
            if self._rendering is None:
                self._rendering = Rendering(ServiceCollector(self.service))
            body = self._rendering.step(1 << 62 if budget_ns is None else budget_ns)
            if body is None:
                return 0
            self._body, self._error = body, ""
        except ImportError as exc:
            self._body, self._error = b"", str(exc)
        self._rendering = None
        self.renders += 1
        while self._waiting:
            self._waiting.popleft().set()
        return 1

    def close(self) -> None:
        """Stop rendering; wake whoever waits (they get the last rendering)."""
        self.closed = True
        while self._waiting:
            self._waiting.popleft().set()


class DashboardServer:
    """A running embedded dashboard: ``host``/``port`` it is bound to, ``url`` of the page,
    the attached ``sampler`` and ``metrics`` relay.  ``close`` (owner thread) stops the HTTP
    thread and detaches both side tasks."""

    def __init__(self, service: Service, httpd: ThreadingHTTPServer, sampler: DashboardSampler,
                 metrics: MetricsRelay) -> None:
        self.service = service
        self.sampler = sampler
        self.metrics = metrics
        self._httpd = httpd
        host, port = httpd.server_address[:2]
        self.host = str(host)
        self.port = int(port)
        # A short poll: ``close`` waits for the serving loop to notice the shutdown.
        self._thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), name="tailguard-dashboard",
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The dashboard page's URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/dashboard"

    def close(self) -> None:
        """Stop serving and detach the side tasks (idempotent; call from the owner thread)."""
        for task in (self.metrics, self.sampler):
            task.close()
            if task in self.service.side_tasks:
                self.service.side_tasks.remove(task)
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _handler(sampler: DashboardSampler, metrics: MetricsRelay, metrics_wait_s: float) -> type:
    class Handler(BaseHTTPRequestHandler):
        """GET /dashboard, /dashboard/data and /metrics (HTTP thread: reads published data only)."""

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            if path in ("/", ""):
                self._send(302, b"", _TEXT, [("location", "/dashboard")])
            elif path == "/dashboard":
                self._send(200, dashboard_page(), "text/html; charset=utf-8")
            elif path == "/dashboard/data":
                try:
                    since = parse_since(query)
                except ValidationError as exc:
                    body = msgspec.json.encode({"error": str(exc), "code": exc.code, "field": "since"})
                    self._send(400, body, _JSON)
                    return
                self._send(200, sampler.data(since), _JSON)
            elif path == "/metrics":
                self._metrics()
            else:
                self._send(404, b"not found: use /dashboard, /dashboard/data or /metrics\n", _TEXT)

        def _metrics(self) -> None:
            got = metrics.request(metrics_wait_s)
            if got is None:
                self._send(503, b"the service's owner thread did not run its side path within %.1f s: "
                           b"call service.run_side_path() in its loop\n" % metrics_wait_s, _TEXT)
            elif got[1]:
                self._send(501, got[1].encode() + b"\n", _TEXT)
            else:
                from tailguard.observe.prometheus import CONTENT_TYPE

                self._send(200, got[0], CONTENT_TYPE)

        def _send(self, code: int, body: bytes, content_type: str,
                  headers: list[tuple[str, str]] | None = None) -> None:
            self.send_response(code)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.send_header("cache-control", "no-store")
            for name, value in headers or []:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: an embedding application owns its logs."""

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow client never holds the process open

    def __init__(self, address: tuple[str, int], handler: type) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)


def serve_dashboard(service: Service, host: str = "127.0.0.1", port: int = 0, *, interval_s: float = 1.0,
                    capacity: int = 300, metrics_wait_s: float = 2.0) -> DashboardServer:
    """Attach a dashboard sampler and a metrics relay to ``service`` and serve them on
    ``host:port`` (0: any free port) from a daemon thread.  Call from the owner thread, which
    must keep calling ``service.run_side_path(budget_s)`` in its loop (that is where the data
    is made).  Close the returned handle to stop."""
    sampler = DashboardSampler(service, interval_s=interval_s, capacity=capacity)
    metrics = MetricsRelay(service)
    httpd = _Server((host, port), _handler(sampler, metrics, metrics_wait_s))
    service.attach(sampler)
    service.attach(metrics)
    return DashboardServer(service, httpd, sampler, metrics)
