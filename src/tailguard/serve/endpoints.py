"""The Open Inference Protocol v2 REST endpoints: route a request, answer its exchange.

``route`` splits the path (no regular expressions on the hot path); ``Endpoints`` — one per
app, shared by its HTTP connections — answers health, metadata and metrics directly and
hands infer requests to the dispatcher with their ``Exchange`` as the reply sink.

=================================================  ======  =================================
path                                               method  answer
=================================================  ======  =================================
/v2/health/live, /v2/health/ready                  GET     200, or 503 (not live / not ready)
/v2                                                GET     server metadata
/v2/models/{name}[/versions/{v}]                   GET     model metadata
/v2/models/{name}[/versions/{v}]/ready             GET     200, or 503 (not ready)
/v2/models/{name}[/versions/{v}]/infer             POST    decisions (``serve/oip.py``)
/metrics                                           GET     Prometheus text
/dashboard                                         GET     the live dashboard page (HTML)
/dashboard/data[?since=T]                          GET     its points after ``T`` (JSON)
=================================================  ======  =================================

Owner: the event loop thread.
"""

from __future__ import annotations

import enum
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tailguard import __version__
from tailguard.schema.wire import Reply, Status
from tailguard.serve.exchange import Exchange, retry_headers
from tailguard.serve.oip import HTTP_STATUS, Call, OipModel, error_body, oip_field
from tailguard.serve.tensors import OipError

if TYPE_CHECKING:
    from tailguard.serve.app import App

__all__ = ["Endpoints", "Route", "endpoints_of", "route"]


class Route(enum.Enum):
    """What a request path names (the method is checked after routing)."""

    LIVE = "live"
    READY = "ready"
    SERVER = "server"
    MODEL = "model"
    MODEL_READY = "model_ready"
    INFER = "infer"
    METRICS = "metrics"
    DASHBOARD = "dashboard"
    DASHBOARD_DATA = "dashboard_data"
    NOT_FOUND = "not_found"


_HEALTH = {b"live": Route.LIVE, b"ready": Route.READY}
_MODEL_ACTIONS = {b"ready": Route.MODEL_READY, b"infer": Route.INFER}
_BOOL = {True: b"true", False: b"false"}
_TOP = {(b"metrics",): Route.METRICS, (b"dashboard",): Route.DASHBOARD,
        (b"dashboard", b"data"): Route.DASHBOARD_DATA}
_ENDPOINTS: weakref.WeakKeyDictionary[App, Endpoints] = weakref.WeakKeyDictionary()


def route(path: bytes) -> tuple[Route, str, str | None]:
    """``(route, model name, version or None)`` of a request path (without its query)."""
    parts = path.split(b"/")
    n = len(parts)
    if n < 2 or parts[0]:
        return Route.NOT_FOUND, "", None
    if parts[1] != b"v2":
        return _TOP.get(tuple(parts[1:]), Route.NOT_FOUND), "", None
    if n == 2 or (n == 3 and not parts[2]):
        return Route.SERVER, "", None
    if parts[2] == b"health" and n == 4:
        return _HEALTH.get(parts[3], Route.NOT_FOUND), "", None
    if parts[2] != b"models" or n < 4 or not parts[3]:
        return Route.NOT_FOUND, "", None
    name, version, rest = _text(parts[3]), None, parts[4:]
    if len(rest) >= 2 and rest[0] == b"versions":
        version, rest = _text(rest[1]), rest[2:]
    if not rest:
        return Route.MODEL, name, version
    if len(rest) == 1:
        return _MODEL_ACTIONS.get(rest[0], Route.NOT_FOUND), name, version
    return Route.NOT_FOUND, "", None


def _text(segment: bytes) -> str:
    text = segment.decode("utf-8", "replace")
    if "%" in text:
        from urllib.parse import unquote

        text = unquote(text)
    return text


def endpoints_of(app: App) -> Endpoints:
    """The app's ``Endpoints``, built on first use (metadata documents encoded once)."""
    ep = _ENDPOINTS.get(app)
    if ep is None:
        ep = _ENDPOINTS[app] = Endpoints(app)
    return ep


class Endpoints:
    """Answers one app's OIP requests (shared by its connections; loop thread only)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.dispatcher = app.dispatcher
        key_dtypes = {e.name: e.key_dtype for e in app.service.spec.entities}
        self.model = OipModel(app.welcome, key_dtypes, __version__)

    def handle(self, ex: Exchange, method: bytes, url: bytes, body: bytes, headers: Mapping[bytes, bytes],
               wire_id: int, arrival_ns: int) -> None:
        """Answer (or submit) one complete request; ``headers`` holds the lower-cased names
        the connection keeps."""
        path = url.split(b"?", 1)[0]
        r, name, version = route(path)
        if r is Route.INFER:
            if method != b"POST":
                ex.answer(405, error_body("method_not_allowed", "use POST"), b"allow: POST\r\n")
            elif self._known(ex, name, version):
                self._infer(ex, body, headers, wire_id, arrival_ns)
            return
        if r is Route.NOT_FOUND:
            ex.answer(404, error_body("not_found", f"no such endpoint: {path.decode('latin-1')!r:.200}"))
            return
        if method != b"GET":
            ex.answer(405, error_body("method_not_allowed", "use GET"), b"allow: GET\r\n")
            return
        app, model = self.app, self.model
        if r is Route.LIVE or r is Route.READY:
            ok = app.live if r is Route.LIVE else app.ready
            ex.answer(200 if ok else 503, b'{"%s":%s,"state":"%s"}' % (
                r.value.encode(), _BOOL[ok], app.state.value.encode()))
        elif r is Route.SERVER:
            ex.answer(200, model.server_metadata)
        elif r is Route.METRICS:
            self._metrics(ex)
        elif r is Route.DASHBOARD or r is Route.DASHBOARD_DATA:
            self._dashboard(ex, r, url)
        elif self._known(ex, name, version):
            if r is Route.MODEL:
                ex.answer(200, model.metadata)
            else:
                ex.answer(200 if app.ready else 503,
                          b'{"name":%s,"ready":%s}' % (model.name_json, _BOOL[app.ready]))

    def _known(self, ex: Exchange, name: str, version: str | None) -> bool:
        model = self.model
        if name != model.name:
            ex.answer(404, error_body(Status.UNKNOWN_MODEL.code, f"unknown model {name!r:.100}; this "
                                      f"server serves {model.name!r}", "model"))
            return False
        if version is not None and version != model.version:
            ex.answer(404, error_body(Status.UNKNOWN_MODEL.code, f"model version {version!r:.100} is not "
                                      f"served (active: {model.version!r})", "version"))
            return False
        return True

    def _infer(self, ex: Exchange, body: bytes, headers: Mapping[bytes, bytes], wire_id: int,
               arrival_ns: int) -> None:
        if headers.get(b"content-encoding", b"identity").lower() != b"identity":
            ex.answer(415, error_body("unsupported_media_type", "compressed bodies are not accepted"))
            return
        header_len: int | None = None
        raw_len = headers.get(b"inference-header-content-length")
        if raw_len is not None:
            if not raw_len.isdigit():
                ex.answer(400, error_body(Status.MALFORMED.code, "bad Inference-Header-Content-Length"))
                return
            header_len = int(raw_len)
        try:
            req, call = self.model.decode(
                body, header_len, wire_id, headers.get(b"x-client-id", b"").decode("latin-1"),
                headers.get(b"traceparent", b"").decode("latin-1"),
            )
        except OipError as exc:
            self.dispatcher.count_error(exc.status)
            ex.answer(HTTP_STATUS[exc.status], error_body(exc.status.code, str(exc), exc.field))
            return
        ex.call = call
        self.dispatcher.submit(req, arrival_ns, ex)

    def _metrics(self, ex: Exchange) -> None:
        """Answered in steps between requests (``serve.metrics.Scrapes``), not at once."""
        try:
            self.app.scrapes.request(ex)
        except ImportError as exc:
            ex.answer(501, error_body("not_implemented", f"/metrics is not available: {exc}"))

    def _dashboard(self, ex: Exchange, r: Route, url: bytes) -> None:
        """The page, or the sampler's points (published on the side path: nothing to compute)."""
        from tailguard.errors import ValidationError
        from tailguard.observe.dashboard import dashboard_page, parse_since

        sampler = self.app.dashboard
        if sampler is None:
            ex.answer(404, error_body("not_found", "the dashboard is off (dashboard_interval_s = 0)"))
        elif r is Route.DASHBOARD:
            ex.answer(200, dashboard_page(), b"cache-control: no-store\r\n", b"text/html; charset=utf-8")
        else:
            try:
                since = parse_since(url.partition(b"?")[2].decode("latin-1"))
            except ValidationError as exc:
                ex.answer(400, error_body(exc.code, str(exc), "since"))
                return
            ex.answer(200, sampler.data(since), b"cache-control: no-store\r\n")

    def answer_reply(self, ex: Exchange, reply: Reply, call: Call) -> None:
        """Turn a dispatcher reply into ``ex``'s response: the OIP body, or the error body
        with its HTTP code (and ``retry-after`` on the retryable refusals)."""
        if reply.status == 0:
            ex.answer(200, self.model.encode_reply(reply, call))
            return
        try:
            status = Status(reply.status)
        except ValueError:
            status = Status.INTERNAL
        extra = retry_headers(reply.retry_after_us) if 20 <= status < 30 else b""
        ex.answer(HTTP_STATUS[status], error_body(status.code, reply.error, oip_field(reply.field)), extra)
