"""The live dashboard in headless Chromium: a real server process under real TCP traffic, and
an embedded engine with its own dashboard thread.

Debian's ``chromium`` is driven by Playwright (never ``playwright install``: no download).
Without ``/usr/bin/chromium`` or Playwright the tests skip, saying why — and fail instead when
``TAILGUARD_REQUIRE_SERVICES=1`` (CI).  Each test waits until every chart has drawn points
from the traffic (the charts' ``data-points`` attributes), then saves a screenshot to its tmp
dir and to ``runs/`` (git-ignored) for people to look at.
"""

from __future__ import annotations

import json
import os
import queue
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from rawclient import RawClient
from toyservice import CTX

from tailguard import Service, load_service
from tailguard.observe.embedded import serve_dashboard
from tailguard.schema.wire import Request

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CLASSES = ("critical", "normal", "bulk")
STAGES = ("ingest", "features", "inference", "delivery", "total")
INTERVAL_S = 0.1
POINTS = 25  # wait for this many points on every chart: about 3 s of traffic
# Every chart that is not switched off has drawn at least POINTS time points.
ALL_DRAWN = """(n) => {
  const charts = [...document.querySelectorAll('[data-chart]')];
  return charts.length > 0 && charts.every((c) => c.dataset.off === '1' || +c.dataset.points >= n);
}"""
# How many pixels of a chart's canvas are painted (axes, grid and lines).
PAINTED = """(key) => {
  const cv = document.querySelector(`[data-chart="${key}"] canvas`);
  const px = cv.getContext('2d').getImageData(0, 0, cv.width, cv.height).data;
  let n = 0;
  for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++;
  return n;
}"""


def _missing(why: str) -> None:
    if os.environ.get("TAILGUARD_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{why} (TAILGUARD_REQUIRE_SERVICES=1)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        _missing(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is missing: pip install 'tailguard[browser]'")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def worker(toy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One real serving process (the worker entry point ``tailguard serve`` runs), on sockets
    bound here, with a short dashboard interval so the test sees many points quickly."""
    tcp, http = socket.socket(), socket.socket()
    for s in (tcp, http):
        s.bind(("127.0.0.1", 0))
        s.listen(64)
    config = {"dashboard_interval_s": INTERVAL_S}
    r, w = os.pipe()
    log_path = tmp_path_factory.mktemp("worker") / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tailguard.serve.workers", str(toy_dir), "--config", json.dumps(config),
             "--ready-fd", str(w), "--listener", f"tcp=fd:{tcp.fileno()}",
             "--listener", f"http=fd:{http.fileno()}"],
            pass_fds=(w, tcp.fileno(), http.fileno()), stdout=log, stderr=subprocess.STDOUT,
        )
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 60.0)
        if not ready or os.read(r, 1) != b"R":
            proc.kill()
            pytest.fail(f"the worker did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
        yield {"tcp": f"127.0.0.1:{tcp.getsockname()[1]}", "http": f"127.0.0.1:{http.getsockname()[1]}"}
    finally:
        os.close(r)
        proc.terminate()
        proc.wait(30)
        tcp.close()
        http.close()


class Traffic(threading.Thread):
    """Requests over TCP until stopped: every class in turn, one in 40 with a budget too small
    to meet (refused at the door), and a pipelined burst of bulk requests now and then (the
    queue fills)."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.stop = threading.Event()
        self.replies = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            c = RawClient(self.address)
            i = 0
            while not self.stop.is_set():
                i += 1
                if i % 500 == 0:
                    for k in range(200):
                        c.send(Request(i * 1000 + k, f"item{k}", context=CTX, priority="bulk"))
                    for _ in range(200):
                        c.recv()
                    continue
                c.request(i, f"item{i % 50}", context=CTX, priority=CLASSES[i % 3],
                          budget_us=1 if i % 40 == 0 else 0)
                self.replies += 1
            c.close()
        except BaseException as exc:  # surfaced by the test, not lost in a thread
            self.error = exc


def _open(browser: Any, url: str) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    return page, errors


def _screenshot(page: Any, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name), full_page=True)
    (ROOT / "runs").mkdir(exist_ok=True)
    page.screenshot(path=str(ROOT / "runs" / name), full_page=True)
    assert (tmp_path / name).stat().st_size > 10_000


def test_the_dashboard_draws_a_served_process_under_traffic(browser: Any, worker: dict[str, str],
                                                            tmp_path: Path) -> None:
    traffic = Traffic(worker["tcp"])
    traffic.start()
    try:
        page, errors = _open(browser, f"http://{worker['http']}/dashboard")
        page.wait_for_function(ALL_DRAWN, arg=POINTS, timeout=60_000)
    finally:
        traffic.stop.set()
        traffic.join(30)
    assert traffic.error is None and traffic.replies > 0
    charts = page.eval_on_selector_all(
        "[data-chart]",
        "cs => Object.fromEntries(cs.map(c => [c.dataset.chart, [+c.dataset.points, c.dataset.off]]))",
    )
    expected = {*(f"class:{c}" for c in CLASSES), *(f"stage:{s}" for s in STAGES),
                "rps", "queued", "events", "rungs", "drift", "rollout"}
    assert set(charts) == expected
    assert all(n >= POINTS for key, (n, off) in charts.items() if key not in ("drift", "rollout"))
    assert charts["drift"] == [0, "1"]  # no drift monitor attached to this server
    assert charts["rollout"] == [0, "1"]  # nor a rollout
    assert page.inner_text("#rollout") == "none"
    for key in ("class:critical", "stage:inference", "rps", "events"):
        assert page.evaluate(PAINTED, key) > 2000, key
    # The door refused the requests whose budget could not be met: the events chart says so.
    assert "rejected:" in page.inner_text('[data-chart="events"] .legend')
    assert page.inner_text("#service") == "· toy"
    assert page.inner_text("#state") == "ready"
    assert "primary: primary/1" in page.inner_text("#versions")
    assert page.inner_text("#drift") == "off"
    _screenshot(page, tmp_path, "dashboard.png")
    assert errors == []
    page.close()


@contextmanager
def embedded_owner(make: Callable[[], tuple[Service, Callable[[int], Any]]]) -> Iterator[str]:
    """The embedding application's thread: ``make()`` loads the service (the owner thread owns
    its engine) and gives the decision call for request ``i``; it serves the dashboard, decides
    until the block ends and runs the side path every 16 decisions.  Yields the dashboard's URL."""
    urls: queue.Queue[str] = queue.Queue()
    stop = threading.Event()
    failure: list[BaseException] = []

    def owner() -> None:
        try:
            service, decide = make()
            with serve_dashboard(service, interval_s=INTERVAL_S) as dash:
                urls.put(dash.url)
                i = 0
                while not stop.is_set():
                    i += 1
                    decide(i)
                    if i % 16 == 0:
                        service.run_side_path(0.0002)
        except BaseException as exc:
            failure.append(exc)
            urls.put("")

    thread = threading.Thread(target=owner, daemon=True)
    thread.start()
    try:
        url = urls.get(timeout=60)
        assert url, failure
        yield url
    finally:
        stop.set()
        thread.join(30)
    assert not failure


def test_an_embedded_engine_serves_its_dashboard_and_metrics(browser: Any, toy_dir: Path,
                                                           tmp_path: Path) -> None:
    def make() -> tuple[Service, Callable[[int], Any]]:
        service = load_service(toy_dir, freeze_gc=False)
        return service, lambda i: service.engine.predict(f"item{i % 50}", CTX, priority=CLASSES[i % 3])

    with embedded_owner(make) as url:
        page, errors = _open(browser, url)
        page.wait_for_function(ALL_DRAWN, arg=POINTS, timeout=60_000)
        metrics = page.request.get(url.replace("/dashboard", "/metrics"))
        assert metrics.status == 200
        assert "tailguard_stage_latency_seconds_bucket" in metrics.text()
        assert page.inner_text("#state") == "embedded"
        assert page.is_hidden("#sec-classes")  # no priority classes without a server
        for key in ("queued", "events", "drift"):
            assert page.get_attribute(f'[data-chart="{key}"]', "data-off") == "1"
        assert int(page.get_attribute('[data-chart="stage:total"]', "data-points") or 0) >= POINTS
        _screenshot(page, tmp_path, "dashboard-embedded.png")
        assert errors == []
        page.close()


def test_a_rollout_shows_its_stage_traffic_and_rollback_reason(browser: Any, toy_dir: Path,
                                                               tmp_path: Path) -> None:
    import shutil

    import msgspec

    from tailguard.models.manifest import read_manifest, write_manifest
    from tailguard.rollout import Guards, Rollout, RolloutPlan, Stage, StageKind

    service_dir = Path(shutil.copytree(toy_dir, tmp_path / "svc"))
    roll_back = threading.Event()

    def make() -> tuple[Service, Callable[[int], Any]]:
        """An embedding application routing its decisions through a canary rollout."""
        service = load_service(service_dir, freeze_gc=False)
        # primary/2: version 1's artifacts relabelled, added after load (deployed, not active).
        v2 = Path(shutil.copytree(service_dir / "models" / "primary" / "1",
                                  service_dir / "models" / "primary" / "2"))
        write_manifest(v2, msgspec.structs.replace(read_manifest(v2), version="2"))
        plan = RolloutPlan(model="primary", version="2", stages=(Stage(
            kind=StageKind.CANARY, share=0.4, min_samples=10**9,
            guards=Guards(max_error_rate=0.5, min_window_samples=10**9)),))
        rollout = Rollout(service, plan, warmup=2)
        service.attach(rollout)
        rollout.start()

        def decide(i: int) -> None:
            rollout.predict(f"item{i % 50}", CTX, priority=CLASSES[i % 3])
            if roll_back.is_set() and rollout.active:
                rollout.rollback("p99 above the SLO (test)")

        return service, decide

    with embedded_owner(make) as url:
        page, errors = _open(browser, url)
        page.wait_for_function(ALL_DRAWN, arg=POINTS, timeout=60_000)
        assert page.get_attribute('[data-chart="rollout"]', "data-off") != "1"
        assert "candidate" in page.inner_text('[data-chart="rollout"] .legend')
        assert page.evaluate(PAINTED, "rollout") > 2000
        assert page.inner_text("#rollout") == "primary 2 active canary 40%"
        panel = page.inner_text("#rollout-panel")
        assert "primary: 1 → 2" in panel and "canary 40.0%" in panel
        roll_back.set()
        page.wait_for_function("() => document.querySelector('#rollout').textContent.includes('rolled_back')",
                               timeout=30_000)
        assert "p99 above the SLO (test)" in page.inner_text("#rollout-panel")
        _screenshot(page, tmp_path, "dashboard-rollout.png")
        assert errors == []
        page.close()
