"""What the side paths cost: audit log, latency metrics, drift and dashboard on against all off.

What it measures, in one run, on the trading example (temporary copies of ``examples/trading``:
one with ``[drift] enabled = true``, one with it off; models and drift reference trained there
when the example's own are missing or stale):

1. In process, open loop.  One service instance (the copy with ``[drift]``), its side paths
   switched per series at the start of each block (``Config``): ``off`` (no hook, no side
   task); ``side`` — the targets' figures (``p50_overhead_ratio``...): every side path on as
   ``tailguard serve`` runs them by default where a core is to spare — the audit log with the
   default 50 ms batched fsync, the ``DriftMonitor`` of its ``[drift]`` section and the
   latency histogram folds in a side process (``tailguard.observe.sideproc``) that reads each
   decision from a shared-memory ring written by the compiled reply-path hook
   (``tailguard.observe.ring``; ``--side-transport pipe``: the tap and msgpack frames), the
   latency histograms merged back, a ``DashboardSampler`` and a Prometheus rendering every
   ``--scrape-s`` (in steps between requests, as the server answers a scrape) here; ``on``:
   the same side paths all in this process (the latency recorder and one ``DecisionTap`` read
   by the audit log and the drift monitor; ``inprocess_*_overhead_ratio``); ``hook``: the tap
   alone with a reader that only advances (the floor of a tap-based design); ``ring``: the
   ring's compiled hook alone, its reader only advancing (the floor of the side process).
   The ``side`` series' child is *paced* (``--side-child paced``, the default): it runs only
   during that series' blocks (SIGSTOP at a block's end, SIGCONT at the next one's start) and
   takes the records by count — what ``sidechild.BATCH_S`` (200 ms) holds at ``--rate`` —
   instead of by time, so its polls and batches land among its own series' decisions at the
   density a server at that rate would see.  A free child (``--side-child free``) runs on its
   200 ms timer all along: most of its batches then fall into other series' blocks, which pay
   for them (a flattering figure).  ``--series`` runs a subset (with ``off``).  One instance, not
   copies: copies differ in memory layout, which moves a cold call's p50 by a few µs between
   them.  Each series runs
   ``engine.predict(symbol, quote, priority="critical")`` at a fixed rate (``--rate``), in
   short interleaved blocks (``--block-s`` 0.1 s, 400 rounds, order rotated per round: this
   VM's speed drifts over seconds); ``off2``, a second all-off series, is the A/A control
   (``aa_p50_ratio``, ``aa_p99_ratio``: how far the method alone moves a ratio).  Each series'
   time-based side work (timer, scrapes, dashboard interval, drift windows) runs on its own
   ``SeriesClock``, which stands still while other series run; its side path runs as the server runs it:
   a slice of ``run_side_path(--side-slice-us)`` right after a reply once 32 decisions wait
   (``Service.side_backlog``), and on the 10 ms timer ``run_side_path(50 us)`` when no slice
   ran in the last 50 ms, always with the server's side-path GC (``SidePathGC``); a request
   due during a slice or a tick waits for it (that wait is part of the cost).  Latency runs
   from each request's intended time to its answer; ``call`` is the predict call alone; each
   side-path tick and slice is timed too.  With ``--breakdown``, ``hook`` and four more
   series, each with one side path alone (``metrics``, ``audit``, ``drift``, ``dashboard``),
   say where the cost comes from (not by default: fewer series get more rounds in the same
   time, and a steadier p99).
2. Through the server (``tailguard serve``, 1 worker, binary protocol), when not skipped:
   the same pair as two servers — ``off``: drift off, ``--dashboard-interval 0``,
   ``--no-latency-recording``; ``on``: drift on, ``--audit-dir`` with the default fsync, the
   dashboard, latency recording and ``--log-json`` to a file — each driven open loop
   (``tailguard.bench.loadgen``) in alternating blocks at ``--server-rate``; the figures are
   medians over blocks.  The dispatcher's per-class timing ring has no switch: on in both.
3. ``audit_records_per_s``: one ``AuditLog`` (default fsync interval) appending single-row
   decisions (``on_decision`` right after each ``predict``) and draining every 1000, as the
   side path does; the rate counts append + drain + close time, not the predict calls.
4. ``replay_1m_s``: ``tailguard.audit.replay.replay`` (verify, then re-run every row) over the
   ``--records`` records step 3 wrote, scaled to 1,000,000 when fewer were written; the
   verify pass is timed on its own too.  ``--profile`` prints replay's top functions.

Run: ``.venv/bin/python benchmarks/observe.py`` (tables), ``--json`` (tables to stderr, the last
stdout line is one JSON object), ``--quick`` for a short smoke run.  Targets print as PASS/FAIL
lines; they never change the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from inproc import Feed  # noqa: E402  (the generated tick feed the in-process benchmark replays)
from support.example import SERVICE_DIR, example_module, log  # noqa: E402

import tailguard  # noqa: E402

SIDE_INTERVAL_NS = 10_000_000  # the server's side-path timer (ServeConfig.side_path_interval_s)
SIDE_BUDGET_S = 50e-6  # and its budget per tick (ServeConfig.side_path_budget_s)
SLICE_MIN_BACKLOG = 32  # default --slice-backlog: ServeConfig.side_slice_backlog
SLICE_RECENT_NS = 50_000_000  # the timer skips side-path work when a slice ran this recently
SCRAPE_STEP_NS = 200_000  # a /metrics rendering's step (serve.metrics.Scrapes.step_ns)
TICKS_PER_BLOCK = 16  # applied between blocks, as a live feed would (keeps features fresh)
TARGETS = (
    # (name, limit, "<=" or ">=", description)
    ("p50_overhead_ratio", 1.10, "<=", "side paths on (in their side process) / off, p50 <= 1.10"),
    ("p99_overhead_ratio", 1.15, "<=", "side paths on (in their side process) / off, p99 <= 1.15"),
    ("audit_records_per_s", 100_000, ">=", "audit appends+drain >= 100k records/s (batched fsync)"),
    ("replay_1m_s", 60.0, "<=", "replay of 1M records < 60 s"),
)


# -- service copies --------------------------------------------------------------------------------
def set_drift(spec_path: Path, enabled: bool) -> None:
    """Set ``enabled`` in the spec's ``[drift]`` table (added when there is none)."""
    lines = spec_path.read_text().splitlines()
    value = f"enabled = {'true' if enabled else 'false'}"
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == "[drift]")
    except StopIteration:
        lines += ["", "[drift]", value]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
        body = [ln for ln in lines[start + 1 : end] if not re.match(r"\s*enabled\s*=", ln)]
        lines[start + 1 : end] = [value, *body]
    spec_path.write_text("\n".join(lines) + "\n")


def service_copies(workdir: Path) -> tuple[Path, Path]:
    """``(plain, drift)``: copies of the trading example, drift off and on, with trained models."""
    train = example_module("train")
    drift = workdir / "trading_drift"
    shutil.copytree(SERVICE_DIR, drift, ignore=shutil.ignore_patterns("__pycache__", "data", "runs"))
    set_drift(drift / "service.toml", True)
    if not train.up_to_date(drift):
        log("example models or drift reference missing or outdated: training them in a copy")
        shutil.rmtree(drift / "models", ignore_errors=True)
        train.train(drift, log=log)
    plain = workdir / "trading_plain"
    shutil.copytree(drift, plain)
    set_drift(plain / "service.toml", False)
    return plain, drift


# -- 1. in process -----------------------------------------------------------------------------------
#: The in-process series: ``off`` and ``on`` (the figures of the targets), then each side path alone.
#: ``off2`` is a second ``off`` (an A/A control): its ratio to ``off`` is the method's noise floor.
SERIES = ("off", "on", "off2", "side", "ring", "hook", "metrics", "audit", "drift", "dashboard")
#: Run by default: the targets' pair, the A/A control, in process and the ring's floor (the rest
#: with ``--breakdown``: fewer series, more rounds of them in the same time, a steadier p99).
DEFAULT_SERIES = SERIES[:5]


class SeriesClock:
    """A series' own time: the real clock less the time the other series' blocks ran.  The
    series interleave in short blocks, so on the real clock a series' time-based side work
    (the dashboard's sampling interval, drift windows closed by time, scrapes, the timer)
    would come once per interval of *everyone's* time, as many times more often per request
    as there are series.  ``resume`` at a block's start returns how long the series was paused."""

    def __init__(self) -> None:
        self.paused_ns = 0
        self._stopped: int | None = None

    def now_ns(self) -> int:
        return time.perf_counter_ns() - self.paused_ns

    def wall_ns(self) -> int:
        return time.time_ns()

    def pause(self) -> None:
        self._stopped = time.perf_counter_ns()

    def resume(self) -> int:
        gap = 0 if self._stopped is None else time.perf_counter_ns() - self._stopped
        self.paused_ns += gap
        self._stopped = None
        return gap


class Side:
    """One service's side path as the server runs it: a slice of ``run_side_path(slice_s)``
    right after each reply (``ServeConfig.side_slice_budget_s``: the loop runs it when it has
    nothing else to do; 0: no slices), and on the timer ``run_side_path(50 us)`` every 10 ms
    with the server's side-path GC tick, plus a Prometheus rendering every ``scrape_ns`` (0:
    none).  Each tick's and slice's duration is kept: a request due during one waits for it."""

    def __init__(self, svc: Any, gc_tick: Any, scrape_ns: int, max_ticks: int, slice_s: float = 0.0,
                 max_slices: int = 0, config: Config | None = None) -> None:
        self.svc = svc
        self.config = config
        self.slice_s = slice_s
        self.slice_backlog = SLICE_MIN_BACKLOG
        self.slices = 0
        self.slice_ns = np.zeros(max_slices if slice_s else 0, dtype=np.int64)
        self.last_slice_ns = 0
        self.gc_tick = gc_tick
        self.due = time.perf_counter_ns() + SIDE_INTERVAL_NS
        self.scrape_ns = scrape_ns
        self.scrape_due = self.due + scrape_ns if scrape_ns else 0
        self.ticks = self.scrapes = self.items = 0
        self.rendering: Any = None
        self.scrape_step_max_ns = 0
        self.tick_ns = np.zeros(max_ticks, dtype=np.int64)

    def tick(self, now: int) -> None:
        # As the server's timer: its side-path work only when no idle slice ran lately (the
        # slices keep up under steady traffic; the timer is the fallback), the GC tick always.
        if not self.slice_s or now - self.last_slice_ns >= SLICE_RECENT_NS:
            self.items += self.svc.run_side_path(SIDE_BUDGET_S)
        self.gc_tick()
        if self.scrape_due and now >= self.scrape_due and self.rendering is None:
            from tailguard.observe.prometheus import Rendering, ServiceCollector

            # As the server answers /metrics: in steps between requests (serve.metrics.Scrapes)
            self.rendering = Rendering(ServiceCollector(self.svc))
            self.scrape_due = now + self.scrape_ns
        t1 = time.perf_counter_ns()
        if self.ticks < len(self.tick_ns):
            self.tick_ns[self.ticks] = t1 - now
        self.ticks += 1
        self.due = max(self.due + SIDE_INTERVAL_NS, t1)

    def scrape_step(self) -> None:
        """One step of the scrape under way (``SCRAPE_STEP_NS``, the server's)."""
        t0 = time.perf_counter_ns()
        if self.rendering.step(SCRAPE_STEP_NS) is not None:
            self.rendering = None
            self.scrapes += 1
        self.scrape_step_max_ns = max(self.scrape_step_max_ns, time.perf_counter_ns() - t0)

    def shift(self, gap_ns: int) -> None:
        """The series was paused ``gap_ns``: its timers move on by as much."""
        self.due += gap_ns
        if self.scrape_due:
            self.scrape_due += gap_ns
        if self.last_slice_ns:
            self.last_slice_ns += gap_ns

    def after_reply(self) -> None:
        """The idle-time slice that may follow a reply: run when the side path's backlog
        reached ``slice_backlog`` decisions (``Service.side_backlog``), as the server does."""
        if self.svc.side_backlog() < self.slice_backlog:
            return
        t0 = self.last_slice_ns = time.perf_counter_ns()
        self.items += self.svc.run_side_path(self.slice_s)
        if self.slices < len(self.slice_ns):
            self.slice_ns[self.slices] = time.perf_counter_ns() - t0
        self.slices += 1


def run_block(side: Side, calls: list[tuple[str, dict[str, float]]], offsets: np.ndarray,
              lat: np.ndarray, svc_ns: np.ndarray, pos: int, stages: np.ndarray | None = None) -> int:
    """``len(offsets)`` requests at their intended times (from now + 1 ms); latency from the
    intended time, service time of the call alone.  Returns decisions not from the primary.
    The series' timers stand still between its blocks (``SeriesClock``)."""
    if side.config is not None:
        side.config.activate(side.svc)
        side.config.resume()
        side.shift(side.config.clock.resume())
    try:
        return _requests(side, calls, offsets, lat, svc_ns, pos, stages)
    finally:
        if side.config is not None:
            side.config.clock.pause()
            side.config.pause()


def _requests(side: Side, calls: list[tuple[str, dict[str, float]]], offsets: np.ndarray,
              lat: np.ndarray, svc_ns: np.ndarray, pos: int, stages: np.ndarray | None) -> int:
    pc = time.perf_counter_ns
    predict = side.svc.engine.predict
    base = pc() + 1_000_000
    odd = 0
    slices = side.slice_s > 0
    for i, (key, ctx) in enumerate(calls):
        t = base + int(offsets[i])
        while True:
            now = pc()
            if now >= side.due:  # a due timer runs before the next request, as in the loop
                side.tick(now)
                continue
            if now >= t:
                break
            if side.rendering is not None:  # a scrape's next step; a request due meanwhile waits
                side.scrape_step()
        t0 = pc()
        d = predict(key, ctx, priority="critical")
        t1 = pc()
        lat[pos] = t1 - t
        svc_ns[pos] = t1 - t0
        if stages is not None:  # the engine's own stage timings (outside the timed call)
            stages[pos] = d.timings_ns
        pos += 1
        if d.flags or d.rung_index:
            odd += 1
        if slices:
            side.after_reply()
    return odd


def pcts(ns: np.ndarray) -> dict[str, float]:
    us = ns / 1e3
    p50, p99, p999 = np.percentile(us, [50, 99, 99.9])
    return {"p50": float(p50), "p99": float(p99), "p999": float(p999), "max": float(us.max()),
            "mean": float(us.mean())}


class Config:
    """One series' side paths on the shared service: its engine hooks, side tasks, decision tap
    and latency recorder, installed by ``activate`` at the start of each of its blocks; with a
    side process, its child runs only while the series does (``resume``/``pause``)."""

    def __init__(self, hooks: list[Any], tasks: dict[str, Any], tap: Any, latency: Any,
                 clock: SeriesClock, ring: Any = None, paced: bool = False) -> None:
        self.hooks, self.tasks, self.tap, self.latency = hooks, tasks, tap, latency
        self.clock, self.ring, self.paced = clock, ring, paced

    def activate(self, svc: Any) -> None:
        svc.engine.set_hooks(self.hooks)
        svc.side_tasks = list(self.tasks.values())
        svc._tap, svc._ring = self.tap, self.ring
        svc.latency = self.latency

    def _signal_child(self, sig: int) -> None:
        side = self.tasks.get("side")
        if self.paced and side is not None and side.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(side.pid, sig)

    def resume(self) -> None:
        """The series' block starts: its side child runs again where it stopped."""
        self._signal_child(signal.SIGCONT)

    def pause(self) -> None:
        """The series' block ends: its side child stops (SIGSTOP) until the next one, so its
        work lands among its own series' decisions, as it would in a server."""
        self._signal_child(signal.SIGSTOP)


def build_configs(names: list[str], drift: Path, workdir: Path, side_transport: str = "auto",
                  rate: float = 2000.0, paced: bool = True) -> tuple[Any, dict[str, Config]]:
    """One service (the copy with ``[drift]``) and each series' side paths on it: ``off`` has
    none; ``on`` one decision tap (its only hook) read by the latency recorder, an ``AuditLog``
    and the ``DriftMonitor``, and a ``DashboardSampler``; the others one of those alone.  One instance
    for every series: separate copies would differ in memory layout, which moves a cold call's
    p50 by a few µs from one copy to the next (more than the side paths cost)."""
    from tailguard.audit.log import AuditLog, new_key
    from tailguard.observe.dashboard import DashboardSampler
    from tailguard.observe.drift import DriftMonitor
    from tailguard.observe.latency import LatencyRecorder
    from tailguard.observe.tap import DecisionTap

    svc = tailguard.load_service(drift, record_latency=True)
    latency = svc.latency
    configs: dict[str, Config] = {}
    for name in names:
        clock = SeriesClock()
        on = name == "on"
        with_latency = on or name == "metrics"
        tapped = on or name in ("audit", "drift", "hook")
        tap = DecisionTap(svc.engine, 1 << 16, history=1024) if tapped else None
        rec = latency
        if on:  # as Service.decision_tap does: the recorder reads the tap, one hook for all
            rec = LatencyRecorder()
            rec.bind_tap(tap)
        svc.latency = rec if with_latency else None  # what a sampler built now will read
        tasks: dict[str, Any] = {}
        if on or name == "audit":
            key = new_key(workdir / f"{name}.key")
            tasks["audit"] = AuditLog.for_service(svc, workdir / f"audit-{name}", key, tap=tap)
        if on or name == "drift":
            tasks["drift"] = DriftMonitor.from_spec(svc, clock=clock)
            tasks["drift"].bind_tap(tap)
        if on or name == "dashboard":
            tasks["dashboard"] = DashboardSampler(svc, interval_s=1.0, capacity=300, clock=clock)
        if name == "hook":  # the tap alone, its one reader only advancing: the reply-path hook's floor
            tasks["free"] = FreeReader(tap)
        hooks = [h for h in (latency if name == "metrics" else None, tap) if h is not None]
        ring = None
        if name == "ring":  # the ring's hook alone, its reader only advancing: the side process's floor
            from tailguard.observe.ring import DecisionRing

            ring = DecisionRing(svc.engine)
            ring.preload([r.label for r in svc.engine.rungs], list(svc.engine._priorities))
            hooks, tasks["free"] = [ring], FreeRing(ring)
        if name == "side":  # as ``on``, the audit log and drift monitor in a side process
            from tailguard.observe.sidechild import BATCH_S
            from tailguard.observe.sideproc import AuditConfig, RemoteDrift, SideProcess

            # As ``tailguard serve --side-process`` wires it: the service's latency recorder a hook
            # until the side process takes the decisions (the ring transport moves it onto the ring,
            # the pipe transport onto the tap).
            rec = LatencyRecorder()
            svc._tap, svc._ring, svc.latency, with_latency = None, None, rec, True
            svc.engine.set_hooks([rec])
            new_key(workdir / "side.key")
            # ``paced``: its child takes the records in batches of what ``BATCH_S`` holds at ``rate``
            # (as in a server at that rate), by count rather than by time, and runs only during
            # this series' blocks (``Config.pause``), so its work lands among its own decisions.
            # Its status is read on the series' clock: as often per decision as in a server.
            pace = ({"batch_interval_s": 3600.0, "batch_records": max(1, round(rate * BATCH_S))}
                    if paced else {})
            sp = SideProcess(svc, audit=AuditConfig(str(workdir / "audit-side"), str(workdir / "side.key")),
                             drift=True, transport=side_transport, clock=clock.now_ns, **pace).start()
            hooks, tap, ring = list(svc.engine.hooks), svc.tap, svc.ring
            tasks = {"side": sp, "drift": RemoteDrift(sp),
                     "dashboard": DashboardSampler(svc, interval_s=1.0, capacity=300, clock=clock)}
        configs[name] = Config(hooks, tasks, tap, rec if with_latency else None, clock, ring,
                               paced=name == "side" and paced)
    return svc, configs


class FreeReader:
    """A side task that takes the tap's entries and does nothing with them: with it, the
    ``hook`` series pays what the reply path pays when the side work itself costs this core
    nothing (a side process on another core would leave no more than this)."""

    def __init__(self, tap: Any) -> None:
        self.reader = tap.reader()

    def drain(self, budget_ns: int | None = None) -> int:
        n = self.reader.pending()
        if n:
            self.reader.advance(self.reader.tap.head)
        return n

    def close(self) -> None:
        self.reader.tap.remove(self.reader)


class FreeRing:
    """As ``FreeReader`` for a ``DecisionRing``: moves its ``consumed`` to its head, no more."""

    def __init__(self, ring: Any) -> None:
        from tailguard.observe.ring import RingReader

        self.ring, self.reader = ring, RingReader(ring.fd)

    def drain(self, budget_ns: int | None = None) -> int:
        head = self.reader.head()
        n = head - self.reader.consumed()
        if n:
            self.reader.advance(head)
        return n

    def close(self) -> None:
        self.reader.close()
        self.ring.close()


def task_stats(tasks: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "side" in tasks:
        st = tasks["side"].statistics()
        out["side"] = {k: st[k] for k in ("sent", "frames", "restarts", "unacknowledged")}
        out["side"]["audit"] = st["audit"]
        return out
    if "audit" in tasks:
        a = tasks["audit"]
        out["audit"] = {"written": a.written, "pending": a.pending, "dropped": a.dropped,
                        "checkpoints": a.checkpoints}
    if "drift" in tasks:
        st = tasks["drift"].statistics()
        out["drift"] = {k: st[k] for k in ("recorded_rows", "dropped_rows", "windows")}
    if "dashboard" in tasks:
        d = tasks["dashboard"]
        out["dashboard"] = {"samples": d.samples, "max_step_us": round(d.max_step_ns / 1e3, 1)}
    return out


def inprocess(args: argparse.Namespace, plain: Path, drift: Path, workdir: Path) -> dict[str, Any]:
    from tailguard.observe.prometheus import render
    from tailguard.serve.app import SidePathGC

    names = list(SERIES if args.breakdown else DEFAULT_SERIES)
    if args.series:  # a subset (always with ``off``, the baseline of every ratio)
        names = ["off", *(n for n in args.series.split(",") if n != "off")]
    svc, configs = build_configs(names, drift, workdir, args.side_transport, args.rate,
                                 args.side_child == "paced")
    # One rendering now, as the server renders /metrics once before it serves: the first scrape
    # would otherwise pay prometheus_client's import (20-40 ms) inside whichever series is first.
    render(svc)
    services = [svc]
    feed = Feed(args.seed)
    feed.apply(services, 5000)
    symbols = sorted(feed.quotes)
    block = max(1, round(args.rate * args.block_s))
    calls = [(symbols[i % len(symbols)], dict(feed.quotes[symbols[i % len(symbols)]])) for i in range(block)]
    offsets = np.round(np.arange(block) * (1e9 / args.rate)).astype(np.int64)
    tailguard.tune_gc()
    gc = SidePathGC()  # as the server runs the cyclic collector: from the side-path timer
    max_ticks = int((args.rounds + 1) * args.block_s * 1e9 / SIDE_INTERVAL_NS) + 100
    scrape = round(args.scrape_s * 1e9)
    slice_s = args.side_slice_us / 1e6
    sides = {name: Side(svc, gc.tick, scrape if name in ("on", "side", "metrics") else 0, max_ticks, slice_s,
                        (args.rounds + 1) * block, configs[name])
             for name in names}
    for s in sides.values():
        s.slice_backlog = args.slice_backlog
    n = block * args.rounds
    lat = {k: np.zeros(n, dtype=np.int64) for k in sides}
    svc_ns = {k: np.zeros(n, dtype=np.int64) for k in sides}
    stages = {k: np.zeros((n, 5), dtype=np.int64) for k in sides}
    odd = dict.fromkeys(sides, 0)
    scratch = np.zeros(block, dtype=np.int64)
    for s in sides.values():  # a warm-up block each, unrecorded
        run_block(s, calls, offsets, scratch, scratch.copy(), 0)
    for s in sides.values():
        s.ticks = s.slices = 0
    log(f"in process: {args.rounds} rounds of {block}-request blocks at {args.rate:g}/s per series "
        f"({', '.join(names)}), side path every {SIDE_INTERVAL_NS / 1e6:g} ms for {SIDE_BUDGET_S * 1e6:g} us")
    pos = 0
    try:
        for r in range(args.rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                odd[name] += run_block(sides[name], calls, offsets, lat[name], svc_ns[name], pos,
                                       stages[name])
                feed.apply(services, TICKS_PER_BLOCK)
            pos += block
    finally:
        gc.close()
    out = {
        "rate": args.rate, "requests_per_series": n, "series": names,
        "latency_us": {k: pcts(v) for k, v in lat.items()},
        "service_us": {k: pcts(v) for k, v in svc_ns.items()},
        # median of each engine stage (ingest, features, inference, delivery, total): where added time lands
        "stage_p50_us": {k: [round(float(x), 3) for x in np.median(v, axis=0) / 1e3]
                         for k, v in stages.items()},
        "tick_us": {k: pcts(s.tick_ns[: min(s.ticks, len(s.tick_ns))]) for k, s in sides.items()},
        "slice_us": {k: pcts(s.slice_ns[: min(s.slices, len(s.slice_ns))])
                     for k, s in sides.items() if s.slices},
        "side_slice_us": args.side_slice_us,
        "side_transport": configs["side"].tasks["side"].transport if "side" in configs else None,
        "side_child": args.side_child,
        "not_primary_or_flagged": odd,
        "side_ticks": {k: s.ticks for k, s in sides.items()},
        "scrapes": sum(s.scrapes for s in sides.values()),
        "scrape_step_max_us": round(max(s.scrape_step_max_ns for s in sides.values()) / 1e3, 1),
        "tasks": {name: task_stats(c.tasks) for name, c in configs.items() if c.tasks},
        "latency_recorder_dropped": {name: c.latency.dropped for name, c in configs.items()
                                     if c.latency is not None},
    }
    for c in configs.values():
        c.activate(svc)
        c.resume()
        svc.run_side_path()
        svc.close()
    return out


# -- 3 + 4. audit throughput and replay ----------------------------------------------------------------
def audit_and_replay(args: argparse.Namespace, plain: Path, workdir: Path) -> dict[str, Any]:
    from tailguard.audit.log import AuditLog, new_key
    from tailguard.audit.replay import replay
    from tailguard.audit.verify import verify

    svc = tailguard.load_service(plain, record_latency=False)
    feed = Feed(args.seed + 1)
    feed.apply([svc], 5000)
    symbols = sorted(feed.quotes)
    key = new_key(workdir / "throughput.key")
    directory = workdir / "audit-throughput"
    audit = AuditLog.for_service(svc, directory, key)  # default fsync interval (50 ms)
    predict, on_decision, pc = svc.engine.predict, audit.on_decision, time.perf_counter_ns
    n = args.records
    append_ns = drain_ns = 0
    log(f"audit: {n} single-row decisions appended and drained every 1000 (fsync every "
        f"{audit.fsync_interval_ns / 1e6:g} ms)")
    i = 0
    while i < n:
        m = min(1000, n - i)
        for j in range(m):
            s = symbols[(i + j) % len(symbols)]
            d = predict(s, feed.quotes[s], priority="bulk")
            t0 = pc()
            on_decision(d)
            append_ns += pc() - t0
        t0 = pc()
        audit.drain(None)
        drain_ns += pc() - t0
        i += m
        if i % 10_000 == 0:
            feed.apply([svc], TICKS_PER_BLOCK)
    t0 = pc()
    audit.close()
    close_ns = pc() - t0
    total_s = (append_ns + drain_ns + close_ns) / 1e9
    size = sum(p.stat().st_size for p in directory.glob("segment-*"))
    out: dict[str, Any] = {
        "records": n, "written": audit.written, "dropped": audit.dropped, "checkpoints": audit.checkpoints,
        "segments": len(list(directory.glob("segment-*"))), "bytes_per_record": round(size / max(n, 1), 1),
        "append_us_per_record": round(append_ns / 1e3 / n, 3),
        "drain_us_per_record": round(drain_ns / 1e3 / n, 3),
        "close_ms": round(close_ns / 1e6, 2), "audit_records_per_s": round(n / total_s),
    }
    log(f"replay: verify, then re-run {n} records ({size / 2**20:.0f} MiB)")
    t0 = pc()
    check = verify(directory, key, svc.spec.name)
    out["verify_s"] = round((pc() - t0) / 1e9, 2)
    out["verify_ok"] = check.ok
    prof = cProfile.Profile() if args.profile else None
    t0 = pc()
    if prof is not None:
        prof.enable()
    rep = replay(directory, key, svc)
    if prof is not None:
        prof.disable()
    out["replay_s"] = round((pc() - t0) / 1e9, 2)
    out["replay"] = {k: v for k, v in rep.as_dict().items() if k != "mismatches"}
    out["replay_mismatches"] = rep.as_dict()["mismatches"][:3]
    out["replay_1m_s"] = round(out["replay_s"] * 1e6 / n, 2)
    out["replay_records_per_s"] = round(n / max(out["replay_s"], 1e-9))
    if prof is not None:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
        out["replay_profile"] = buf.getvalue()
    svc.close()
    return out


# -- 2. through the server ----------------------------------------------------------------------------
def through_server(args: argparse.Namespace, plain: Path, drift: Path, workdir: Path) -> dict[str, Any]:
    from serve import quotes

    from tailguard.audit.log import new_key
    from tailguard.bench import loadgen
    from tailguard.bench.loadgen import LoadConfig, Target, Workload
    from tailguard.bench.mix import parse_mix
    from tailguard.serve.process import ServerProcess
    from tailguard.spec import load_spec

    key_file = workdir / "server.key"
    new_key(key_file)
    budgets = {p.name: float(p.budget) for p in load_spec(plain).priorities}
    keys, contexts = quotes(args.seed)
    work = Workload(parse_mix(args.server_class).with_budgets(budgets), keys, list(contexts),
                    entity="instrument", model="trading")
    off_args = ("--dashboard-interval", "0", "--no-latency-recording")
    on_args = ("--audit-dir", str(workdir / "audit-server"), "--audit-key-file", str(key_file),
               "--log-json", str(workdir / "server.log.jsonl"))
    blocks: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    common = ("--tcp", "127.0.0.1:0", "--workers", "1")
    log(f"server: {args.server_rounds} alternating open-loop blocks of {args.server_block_s:g} s at "
        f"{args.server_rate:g}/s, class {args.server_class}, per server (off, on)")
    with ServerProcess.start(plain, *common, *off_args) as s_off, \
            ServerProcess.start(drift, *common, *on_args) as s_on:
        targets = {"off": Target("tcp", s_off.tcp or ""), "on": Target("tcp", s_on.tcp or "")}
        for r in range(args.server_rounds):
            order = ["off", "on"] if r % 2 == 0 else ["on", "off"]
            for name in order:
                rep = loadgen.run(targets[name], work, LoadConfig(rate_hz=args.server_rate,
                                                                   duration_s=args.server_block_s,
                                                                   warmup_s=0.5))
                blocks[name].append({**rep["latency_us"], "server_p50": rep["server_us"].get("p50"),
                                     "server_p99": rep["server_us"].get("p99"), "sent": rep["sent"],
                                     "ok": rep["ok"], "statuses": rep["statuses"],
                                     "send_lag_p99": rep["send_lag_us"].get("p99")})
    out: dict[str, Any] = {"rate": args.server_rate, "class": args.server_class, "blocks": args.server_rounds}
    for name, bl in blocks.items():
        out[name] = {k: statistics.median(b[k] for b in bl if b.get(k) is not None)
                     for k in ("p50", "p99", "p999", "server_p50", "server_p99", "send_lag_p99")
                     if any(b.get(k) for b in bl)}
        out[name]["sent"] = sum(b["sent"] for b in bl)
        out[name]["ok"] = sum(b["ok"] for b in bl)
        codes = sorted({k for b in bl for k in b["statuses"]})
        out[name]["statuses"] = {k: sum(b["statuses"].get(k, 0) for b in bl) for k in codes}
    audit_dir = workdir / "audit-server"
    out["audit_bytes"] = sum(p.stat().st_size for p in audit_dir.rglob("segment-*"))
    return out


# -- figures, table, main ---------------------------------------------------------------------------
def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


class _Missing(dict):  # type: ignore[type-arg]
    """The figures of a series not run (``--series``): every percentile None."""

    def __getitem__(self, key: str) -> None:
        return None


def summarize(res: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    ip, ar = res["inprocess"], res["audit"]
    lat = {k: ip["latency_us"].get(k, _Missing()) for k in SERIES}
    svc = {k: ip["service_us"].get(k, _Missing()) for k in SERIES}
    out: dict[str, Any] = {
        # The targets' figures: every side path on as ``tailguard serve`` runs them by default where
        # a core is to spare (audit log, drift and latency folds in a side process fed by the ring;
        # metrics, dashboard and scrapes here) against all off.  In process: ``inprocess_*``.
        "p50_overhead_ratio": _ratio(lat["side"]["p50"], lat["off"]["p50"]),
        "p99_overhead_ratio": _ratio(lat["side"]["p99"], lat["off"]["p99"]),
        "p999_overhead_ratio": _ratio(lat["side"]["p999"], lat["off"]["p999"]),
        "inprocess_p50_overhead_ratio": _ratio(lat["on"]["p50"], lat["off"]["p50"]),
        "inprocess_p99_overhead_ratio": _ratio(lat["on"]["p99"], lat["off"]["p99"]),
        "inprocess_p999_overhead_ratio": _ratio(lat["on"]["p999"], lat["off"]["p999"]),
        "audit_records_per_s": ar["audit_records_per_s"],
        "replay_1m_s": ar["replay_1m_s"],
        "service_p50_overhead_ratio": _ratio(svc["on"]["p50"], svc["off"]["p50"]),
        "service_p99_overhead_ratio": _ratio(svc["on"]["p99"], svc["off"]["p99"]),
        # the A/A control: two identical series with every side path off; how far this is from
        # 1.0 is how far the method itself can move a ratio
        "aa_p50_ratio": _ratio(lat["off2"]["p50"], lat["off"]["p50"]),
        "aa_p99_ratio": _ratio(lat["off2"]["p99"], lat["off"]["p99"]),
    }
    out["side_transport"] = ip["side_transport"]
    out["side_child"] = ip["side_child"]
    if "hook" in ip["series"]:  # the tap's hook alone, its side work free: the floor of a tap-based design
        out["hook_p50_overhead_ratio"] = _ratio(lat["hook"]["p50"], lat["off"]["p50"])
        out["hook_p99_overhead_ratio"] = _ratio(lat["hook"]["p99"], lat["off"]["p99"])
    if "ring" in ip["series"]:  # the ring's hook alone, its side work free: the side process's floor
        out["ring_p50_overhead_ratio"] = _ratio(lat["ring"]["p50"], lat["off"]["p50"])
        out["ring_p99_overhead_ratio"] = _ratio(lat["ring"]["p99"], lat["off"]["p99"])
    out["stage_p50_us"] = ip["stage_p50_us"]
    for name in ip["series"]:
        for q in ("p50", "p99", "p999", "max"):
            out[f"inproc_{name}_{q}_us"] = round(lat[name][q], 2)
            out[f"inproc_{name}_service_{q}_us"] = round(svc[name][q], 2)
        if name != "off":  # each side path alone: what it adds to the call (p50) and the tail (p99)
            out[f"{name}_service_p50_added_us"] = round(svc[name]["p50"] - svc["off"]["p50"], 2)
            out[f"{name}_p99_ratio"] = _ratio(lat[name]["p99"], lat["off"]["p99"])
    out["side_tick_us"] = {k: {q: round(v[q], 1) for q in ("p50", "p99", "max")}
                           for k, v in ip["tick_us"].items()}
    out["side_slice_us"] = {k: {q: round(v[q], 1) for q in ("p50", "p99", "max")}
                            for k, v in ip.get("slice_us", {}).items()}
    out["side_slice_budget_us"] = ip.get("side_slice_us", 0)
    out["inproc"] = {k: ip[k] for k in ("rate", "requests_per_series", "not_primary_or_flagged", "side_ticks",
                                        "scrapes", "scrape_step_max_us", "tasks", "latency_recorder_dropped")}
    out["audit"] = {k: v for k, v in ar.items() if k != "replay_profile"}
    srv = res.get("server")
    if srv is not None:
        out["server_p50_overhead_ratio"] = _ratio(srv["on"].get("p50"), srv["off"].get("p50"))
        out["server_p99_overhead_ratio"] = _ratio(srv["on"].get("p99"), srv["off"].get("p99"))
        out["server"] = srv
    out["targets"] = {}
    for name, limit, op, _ in TARGETS:
        v = out.get(name)
        ok = v is not None and (v <= limit if op == "<=" else v >= limit)
        out["targets"][name] = {"value": v, "limit": limit, "op": op, "pass": bool(ok)}
    out["quick"] = bool(args.quick)
    out["total_s"] = round(res["total_s"], 1)
    out["python"] = platform.python_version()
    out["cpus"] = os.cpu_count()
    out["machine"] = platform.machine()
    return out


def report(s: dict[str, Any], res: dict[str, Any], stream: Any) -> None:
    def p(*a: Any) -> None:
        print(*a, file=stream)

    p(f"tailguard side-path cost: trading service, python {s['python']}, {s['cpus']} cpus"
      f"{' (QUICK)' if s['quick'] else ''}")
    ip = s["inproc"]
    p(f"in process, open loop at {ip['rate']:g}/s, {ip['requests_per_series']} requests per series (us; "
      "'intended': from the intended send time, 'call': the predict call alone; 'tick': one side-path tick):")
    p(f"  {'series':<10}{'p50':>9}{'p99':>9}{'p99.9':>9}{'max':>9} |{'call p50':>9}{'p99':>8}{'p99.9':>8}"
      f" |{'tick p50':>9}{'p99':>8}{'max':>8}")
    for name in res["inprocess"]["series"]:
        tk = s["side_tick_us"][name]
        cells = "".join(f"{s[f'inproc_{name}_{q}_us']:>9.1f}" for q in ("p50", "p99", "p999", "max"))
        p(f"  {name:<10}{cells}"
          f" |{s[f'inproc_{name}_service_p50_us']:>9.2f}{s[f'inproc_{name}_service_p99_us']:>8.1f}"
          f"{s[f'inproc_{name}_service_p999_us']:>8.1f} |{tk['p50']:>9.1f}{tk['p99']:>8.1f}{tk['max']:>8.1f}")
    p(f"  A/A control (off2/off, both with every side path off): p50 {s['aa_p50_ratio']}, "
      f"p99 {s['aa_p99_ratio']}")
    p(f"  side/off (the targets: audit, drift, latency folds in a side process fed by the ring, "
      f"{s['side_transport']}, child {s['side_child']}): p50 {s['p50_overhead_ratio']}, "
      f"p99 {s['p99_overhead_ratio']}, p99.9 {s['p999_overhead_ratio']}")
    p(f"  on/off (everything in process): p50 {s['inprocess_p50_overhead_ratio']}, "
      f"p99 {s['inprocess_p99_overhead_ratio']}, p99.9 {s['inprocess_p999_overhead_ratio']}; the call alone: "
      f"p50 {s['service_p50_overhead_ratio']}, p99 {s['service_p99_overhead_ratio']}")
    if "hook_p50_overhead_ratio" in s:
        p(f"  hook/off (the reply-path tap, its reader only advancing): p50 {s['hook_p50_overhead_ratio']}, "
          f"p99 {s['hook_p99_overhead_ratio']}")
    if "ring_p50_overhead_ratio" in s:
        p(f"  ring/off (the side process's ring hook, its reader only advancing): p50 "
          f"{s['ring_p50_overhead_ratio']}, p99 {s['ring_p99_overhead_ratio']}")
    p("  engine stage medians (us): " + "; ".join(
        f"{n} " + "/".join(f"{x:.2f}" for x in v) for n, v in s["stage_p50_us"].items())
      + "  (ingest/features/inference/delivery/total)")
    alone = [n for n in res["inprocess"]["series"] if n not in ("off", "on", "off2", "side", "hook", "ring")]
    if alone:
        p("  each alone: " + ", ".join(f"{n} +{s[f'{n}_service_p50_added_us']} us call p50, "
                                       f"p99 x{s[f'{n}_p99_ratio']}" for n in alone))
    for name, sl in s["side_slice_us"].items():
        p(f"  {name}: slices after replies ({s['side_slice_budget_us']:g} us budget) p50 {sl['p50']} us, "
          f"p99 {sl['p99']} us, max {sl['max']} us")
    p(f"  side ticks {ip['side_ticks']}, scrapes {ip['scrapes']} (longest step "
      f"{ip['scrape_step_max_us']} us), non-primary/flagged {ip['not_primary_or_flagged']}")
    for name, st in ip["tasks"].items():
        p(f"  {name}: {st}")
    dropped = [n for n, st in ip["tasks"].items()
               if st.get("audit", {}).get("dropped") or st.get("drift", {}).get("dropped_rows")]
    if dropped:
        p(f"WARNING: the side path dropped work in {dropped}: their cost is understated")
    a = s["audit"]
    p(f"audit: {a['records']} records, {a['audit_records_per_s']:,}/s (append {a['append_us_per_record']} us"
      f" + drain {a['drain_us_per_record']} us per record, close {a['close_ms']} ms), "
      f"{a['bytes_per_record']} B/record, {a['checkpoints']} checkpoints, dropped {a['dropped']}")
    p(f"replay: {a['replay_s']} s for {a['records']} records ({a['replay_records_per_s']:,}/s; verify alone "
      f"{a['verify_s']} s) -> {a['replay_1m_s']} s per 1M; {a['replay']}")
    prof = res["audit"].get("replay_profile")
    if prof:
        p(prof)
    srv = s.get("server")
    if srv is not None:
        p(f"through the server, open loop at {srv['rate']:g}/s (class {srv['class']}), median of "
          f"{srv['blocks']} blocks (us):")
        for name in ("off", "on"):
            v = srv[name]
            p(f"  {name:<4} p50 {v.get('p50', 0):>8.1f} p99 {v.get('p99', 0):>8.1f} "
              f"p99.9 {v.get('p999', 0):>8.1f}  server p50 {v.get('server_p50', 0):>7.1f} "
              f"p99 {v.get('server_p99', 0):>7.1f}  send lag p99 {v.get('send_lag_p99', 0):>7.1f}  "
              f"ok {v['ok']}/{v['sent']} {v['statuses']}")
        p(f"  on/off: p50 {s['server_p50_overhead_ratio']}, p99 {s['server_p99_overhead_ratio']}; "
          f"audit {srv['audit_bytes'] / 2**20:.1f} MiB written")
    for name, _limit, _op, desc in TARGETS:
        t = s["targets"][name]
        p(f"{'PASS' if t['pass'] else 'FAIL'} {name} = {t['value']} (target: {desc})")
    p(f"ran {s['total_s']} s")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="tailguard-bench-observe-"))
    try:
        plain, drift = service_copies(workdir)
        res: dict[str, Any] = {"inprocess": inprocess(args, plain, drift, workdir)}
        res["audit"] = audit_and_replay(args, plain, workdir)
        if not args.no_server:
            res["server"] = through_server(args, plain, drift, workdir)
        res["total_s"] = time.perf_counter() - t0
        return res
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short phases and 100k audit records: a smoke run")
    ap.add_argument("--rate", type=float, default=2000.0, help="in-process requests per second per series")
    ap.add_argument("--block-s", type=float, default=0.1,
                    help="seconds per in-process block (short blocks, many rounds: this VM's speed drifts "
                         "over seconds, which longer blocks turn into differences between series)")
    ap.add_argument("--rounds", type=int, default=0, help="in-process rounds (default 400, quick 80)")
    ap.add_argument("--breakdown", action="store_true",
                    help="in process: also hook (the tap) and each side path alone (metrics, audit, drift, "
                         "dashboard)")
    ap.add_argument("--series", default="",
                    help="in process: only these series, comma-separated (with off always), e.g. off2,side")
    ap.add_argument("--side-slice-us", type=float, default=100.0,
                    help="in process: side-path slice budget after replies, as the server runs it "
                         "(0: timer only)")
    ap.add_argument("--slice-backlog", type=int, default=SLICE_MIN_BACKLOG,
                    help="decisions waiting before a slice runs after a reply (as "
                         "ServeConfig.side_slice_backlog; default 32)")
    ap.add_argument("--scrape-s", type=float, default=15.0, help="Prometheus render interval (0: none)")
    ap.add_argument("--side-transport", choices=("auto", "ring", "pipe"), default="auto",
                    help="how the side series' decisions reach its side process (SideProcess transport)")
    ap.add_argument("--side-child", choices=("paced", "free"), default="paced",
                    help="the side series' child: 'paced' runs only during that series' blocks and takes "
                         "the records by count (what BATCH_S holds at --rate), so its work lands among its "
                         "own decisions; 'free' runs all along on its 200 ms timer (its batches then fall "
                         "mostly in other series' blocks: flattering)")
    ap.add_argument("--records", type=int, default=0, help="audit records to write and replay (default 1M)")
    ap.add_argument("--profile", action="store_true", help="profile replay, print its top functions")
    ap.add_argument("--no-server", action="store_true", help="skip the through-the-server pair")
    ap.add_argument("--server-rate", type=float, default=2000.0, help="server requests per second")
    ap.add_argument("--server-class", default="normal", help="priority class of the server requests")
    ap.add_argument("--server-block-s", type=float, default=3.0, help="seconds per server block")
    ap.add_argument("--server-rounds", type=int, default=0, help="server blocks each (default 10, quick 4)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="tables to stderr, one JSON object on stdout")
    args = ap.parse_args()
    args.rounds = args.rounds or (80 if args.quick else 400)
    args.records = args.records or (100_000 if args.quick else 1_000_000)
    args.server_rounds = args.server_rounds or (4 if args.quick else 10)
    res = measure(args)
    summary = summarize(res, args)
    report(summary, res, sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
