"""One ``/metrics`` for all workers: the supervisor scrapes each worker and merges.

With ``--workers N`` the shared HTTP port reaches whichever worker accepts the connection, so
a scrape there sees one process.  With ``--metrics HOST:PORT`` the supervisor serves an
aggregated exposition instead: every worker also listens on a private Unix socket
(``<run dir>/<pid>.sock``, HTTP, the same ``/metrics``), and on each scrape the supervisor
fetches every worker's exposition, parses it and re-emits all families once, each sample
still labelled by ``worker`` (so ``sum by (...)`` in PromQL aggregates and a dead worker's
series simply stop).  Workers do nothing extra between scrapes — the rendering happens in
each worker only when the supervisor asks, exactly as for a direct scrape.

The supervisor adds ``tailguard_workers`` (expected, answered) and
``tailguard_worker_restarts_total``.  A worker that does not answer within the timeout is
left out of that scrape (and counted), never blocks it.

Owner: the supervisor's metrics thread (``MetricsAggregator.start``).
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["MetricsAggregator", "fetch_unix", "merge_expositions"]

_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def fetch_unix(path: str, url: str = "/metrics", timeout_s: float = 2.0) -> bytes:
    """GET ``url`` from an HTTP server on the Unix socket ``path`` (raises OSError/HTTPException)."""
    conn = _UnixConnection(path, timeout_s)
    try:
        conn.request("GET", url)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise http.client.HTTPException(f"{path}{url}: HTTP {resp.status}")
        return body
    finally:
        conn.close()


def merge_expositions(texts: Iterable[str]) -> list[Any]:
    """Parse Prometheus text expositions and merge families of the same name (samples appended
    in input order).  Returns ``prometheus_client`` Metric objects."""
    from prometheus_client.parser import text_string_to_metric_families

    merged: dict[str, Any] = {}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            have = merged.get(fam.name)
            if have is None:
                merged[fam.name] = fam
            else:
                have.samples.extend(fam.samples)
    return list(merged.values())


class MetricsAggregator:
    """Serve the merged exposition of the workers whose sockets are in ``run_dir``."""

    def __init__(self, address: tuple[str, int], run_dir: str | Path, *,
                 expected: Callable[[], int], restarts: Callable[[], int], timeout_s: float = 2.0) -> None:
        self.run_dir = Path(run_dir)
        self.expected = expected
        self.restarts = restarts
        self.timeout_s = timeout_s
        self.scrape_errors = 0
        agg = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's method name
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404)
                    return
                body = agg.render()
                self.send_response(200)
                self.send_header("Content-Type", _CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None  # no access log on stderr

        self.server = ThreadingHTTPServer(address, Handler)
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """``host:port`` actually bound."""
        host, port = self.server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> None:
        """Serve on a daemon thread."""
        self._thread = threading.Thread(target=self.server.serve_forever, name="tailguard-metrics",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()

    def scrape_workers(self) -> list[str]:
        """Every worker's exposition that answered (in socket-name order)."""
        texts = []
        for sock in sorted(self.run_dir.glob("*.sock")):
            try:
                texts.append(fetch_unix(str(sock), timeout_s=self.timeout_s).decode())
            except (OSError, http.client.HTTPException):
                self.scrape_errors += 1
        return texts

    def render(self) -> bytes:
        """The merged exposition plus the supervisor's own families."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        texts = self.scrape_workers()
        families = merge_expositions(texts)
        workers = GaugeMetricFamily("tailguard_workers",
                                    "Worker processes: expected and answering this scrape.", labels=["state"])
        workers.add_metric(["expected"], self.expected())
        workers.add_metric(["answered"], len(texts))
        restarts = CounterMetricFamily("tailguard_worker_restarts", "Workers restarted by the supervisor.")
        restarts.add_metric([], self.restarts())
        errors = CounterMetricFamily("tailguard_worker_scrape_errors",
                                     "Worker scrapes that failed or timed out (left out of that scrape).")
        errors.add_metric([], self.scrape_errors)
        own = [workers, restarts, errors]

        class Merged:
            def collect(self) -> Iterator[Any]:
                yield from families
                yield from own

        registry = CollectorRegistry(auto_describe=False)
        registry.register(Merged())
        out: bytes = generate_latest(registry)
        return out
