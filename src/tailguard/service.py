"""Load a service directory into a ready engine: the app-level wiring of the core.

``load_service(dir)`` reads ``service.toml``, compiles the feature views (transforms
imported, versions hashed), creates the online store (embedded, or with ``[online] backend =
"redis"`` the shared Redis store behind a near-cache, see ``features.remote``) and the stream
processor writing to it, loads
and verifies every model (refusing mismatched feature versions), compiles the ladder, builds
the engine with its side-path hooks (the latency recorder by default), and finally moves
everything allocated so far out of the garbage collector's sight (``gc.freeze``), so that
collections triggered by request garbage never walk the loaded service.

Everything that can fail does so here, with a clear error — never at the first request.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tailguard.clock import Clock, MonotonicClock
from tailguard.engine import DecisionHook, Engine
from tailguard.errors import SpecError
from tailguard.features.assembler import FeatureAssembler
from tailguard.features.online.protocol import OnlineStore
from tailguard.features.remote import KeyIndex, RemoteFeatures, online_breaker, view_policies
from tailguard.features.store import InMemoryOnlineStore
from tailguard.features.stream import StreamProcessor
from tailguard.features.view import FeatureView, compile_views
from tailguard.models.repository import LoadedModel, load_model
from tailguard.observe.latency import LatencyRecorder
from tailguard.observe.ring import DecisionRing
from tailguard.observe.tap import DecisionTap
from tailguard.resilience.isolation import IsolatedRuntime
from tailguard.resilience.ladder import compile_ladder
from tailguard.spec import RungKind, ServiceSpec, load_spec

__all__ = ["Service", "SideTask", "load_service", "tune_gc"]


@runtime_checkable
class SideTask(Protocol):
    """Work done off the reply path (audit writer, drift monitor, trace exporter...).

    ``drain(budget_ns)`` does queued work for at most ``budget_ns`` of real time (None:
    everything) and returns how many items it processed; ``close()`` finishes and releases
    what the task holds.  Both run on the owner thread, between requests.
    """

    def drain(self, budget_ns: int | None = None) -> int:
        """Do queued work for at most ``budget_ns`` (None: all); the number of items done."""
        ...

    def close(self) -> None:
        """Finish the queued work and release what the task holds."""
        ...


@dataclass(eq=False)
class Service:
    """A loaded service: spec, views, store, stream processor, models and engine.

    With a shared online store, ``online`` is it (a ``NearCachedStore``: reads, writes,
    ``statistics()``) and ``store`` the engine's key index, whose writes go to ``online``."""

    spec: ServiceSpec
    directory: Path
    views: dict[str, FeatureView]
    store: InMemoryOnlineStore
    stream: StreamProcessor
    models: dict[str, LoadedModel]
    engine: Engine
    latency: LatencyRecorder | None
    side_tasks: list[SideTask] = field(default_factory=list)
    online: OnlineStore | None = None
    _tap: DecisionTap | None = field(default=None, init=False, repr=False)
    _ring: DecisionRing | None = field(default=None, init=False, repr=False)
    _turn: int = field(default=0, init=False, repr=False)  # which side task goes first next

    def attach(self, task: SideTask) -> None:
        """Run ``task`` on this service's side path; when it also has ``on_decision`` and
        ``on_batch`` it is installed as an engine hook (it then sees every decision)."""
        bind = getattr(task, "bind_tap", None)
        if bind is not None:  # reads the one shared copy of each decision instead of a hook
            bind(self.decision_tap())
        elif isinstance(task, DecisionHook):
            self.engine.set_hooks([*self.engine.hooks, task])
        self.side_tasks.append(task)

    @property
    def tap(self) -> DecisionTap | None:
        """The shared ``DecisionTap`` if a side task made one (``decision_tap()`` makes it)."""
        return self._tap

    def decision_tap(self) -> DecisionTap:
        """The service's shared ``DecisionTap`` (``tailguard.observe.tap``): one copy of each
        decision's rows on the reply path for every side task that reads them.  Made and
        installed as an engine hook on first use; the latency recorder, if installed as a hook,
        is moved onto it (so the engine keeps one hook)."""
        tap = self._tap
        if tap is None:
            tap = DecisionTap(self.engine, 1 << 16, history=1024)
            self._tap = tap
            # The latency recorder reads the tap too: one reply-path hook for all side paths.
            self._hook_instead_of_latency(tap, lambda lat: lat.bind_tap(tap))
        return tap

    def _hook_instead_of_latency(self, hook: Any, bind: Any) -> None:
        """Install ``hook``; the latency recorder, if it is a hook, is taken off and ``bind``-ed
        to read from ``hook`` instead."""
        hooks = list(self.engine.hooks)
        if self.latency is not None and self.latency in hooks:
            hooks.remove(self.latency)
            bind(self.latency)
        self.engine.set_hooks([*hooks, hook])

    @property
    def ring(self) -> DecisionRing | None:
        """The shared-memory ``DecisionRing`` if a side process made one (``decision_ring()``)."""
        return self._ring

    def decision_ring(self, capacity: int = 1 << 14) -> DecisionRing:
        """The service's ``DecisionRing`` (``tailguard.observe.ring``): each decision copied by a
        compiled hook into shared memory, for a side process on another core.  Made and
        installed as an engine hook on first use, its labels (model versions, priority classes)
        known from the start; the latency recorder, if installed as a hook, is moved onto it
        (it then folds the ring's timings on the side path: one reply-path hook)."""
        ring = self._ring
        if ring is None:
            ring = DecisionRing(self.engine, capacity)
            ring.preload([r.label for r in self.engine.rungs], list(self.engine._priorities))
            self._ring = ring
            self._hook_instead_of_latency(ring, lambda lat: lat.bind_ring(ring))
        return ring

    def release_ring(self) -> None:
        """Take the ``DecisionRing`` off the engine (its side process is gone for good): the
        latency recorder folds what the ring holds and goes back to the tap or to being a hook."""
        ring = self._ring
        if ring is None:
            return
        self._ring = None
        hooks = [h for h in self.engine.hooks if h is not ring]
        lat = self.latency
        if lat is not None and lat.unbind_ring():
            if self._tap is not None:
                lat.bind_tap(self._tap)
            else:
                hooks.append(lat)
        self.engine.set_hooks(hooks)
        ring.close()

    def close(self) -> None:
        """Close every attached side task (writes what they still hold), newest first, then
        the shared online store's connections and invalidation listener (if any)."""
        while self.side_tasks:
            self.side_tasks.pop().close()
        if self.online is not None:
            self.online.close()

    @property
    def feature_versions(self) -> dict[str, str]:
        """Live version of every feature view."""
        return {n: v.version for n, v in self.views.items()}

    def run_side_path(self, budget_s: float | None = None) -> int:
        """Do queued side-path work (model probes, histogram aggregation, attached tasks) on the owner
        thread in idle time, for at most ``budget_s`` (None: everything queued).  Returns
        the number of items processed (0: nothing was pending)."""
        if budget_s is None:
            n = self.engine.run_side_path()
            n += self.latency.drain() if self.latency is not None else 0
            for task in self.side_tasks:
                n += task.drain(None)
            return n
        # The real clock, not the injected one: this bounds real CPU time spent in an idle gap.
        end = time.perf_counter_ns() + int(budget_s * 1e9)
        n = self.engine.run_side_path(end - time.perf_counter_ns())
        if self.latency is not None:
            left = end - time.perf_counter_ns()
            if left > 0:
                n += self.latency.drain(left)
        # The tasks take turns at going first (the first always gets a small slice, so a busy
        # task cannot starve the others); once the budget is spent the rest wait for the next
        # call, so a slice overruns its budget by one task's step, not by every task's smallest
        # step in turn (in-process trading benchmark: p99 on/off 1.30 against 1.50 with every
        # task running each slice, chunked latency folding included).
        tasks = self.side_tasks
        k = len(tasks)
        if k:
            first = self._turn % k
            self._turn += 1
            for i in range(k):
                left = end - time.perf_counter_ns()
                if i and left <= 0:
                    break
                n += tasks[(first + i) % k].drain(max(left, 5_000))
        return n

    def side_backlog(self) -> int:
        """Decisions waiting for the side path: the most any reader of the shared tap has not
        taken yet, or the latency recorder's queue once it holds a whole chunk (it folds only
        whole chunks in a budgeted drain, so a partial one is no reason to run).  Cheap (a few
        integer reads): an owner checks it after each reply to run a side-path slice only once
        enough work has gathered for the slice's fixed costs to be spread thin."""
        tap, lat = self._tap, self.latency
        n = 0 if tap is None else tap.backlog(ignore=None if lat is None else lat.reader)
        # (a ring's backlog is the side process's: nothing for this core to do about it)
        if lat is not None:
            waiting = lat.pending()
            if waiting >= lat.chunk:
                n = max(n, waiting)
        return n

    def latency_snapshot(self) -> dict[str, Any]:
        """p50/p99/p99.9/p99.99 per stage (drains pending timings first)."""
        if self.latency is None:
            return {}
        return self.latency.snapshot()


def load_service(
    directory: str | Path,
    *,
    clock: Clock | None = None,
    hooks: Sequence[DecisionHook] = (),
    record_latency: bool = True,
    freeze_gc: bool = True,
    store_capacity: int = 1024,
    online_url: str | None = None,
    offline: bool = False,
) -> Service:
    """Load and verify a service directory; see the module docstring.  ``online_url``
    overrides ``[online] url`` (and only matters with ``backend = "redis"``); ``offline``
    keeps features in memory whatever ``[online]`` says (a side process that only reads the
    decisions of the engine that serves: ``tailguard.observe.sideproc``)."""
    root = Path(directory).resolve()
    spec = load_spec(root)
    clock = clock or MonotonicClock()
    views = compile_views(spec.feature_views, str(root))
    live = {n: v.version for n, v in views.items()}
    online: OnlineStore | None = None
    if spec.online.backend == "redis" and not offline:
        online = _open_online(spec, views, clock, online_url)
        store: InMemoryOnlineStore = KeyIndex(views, spec.entities, online, clock=clock,
                                              max_keys=spec.online.max_keys)
        stream = StreamProcessor(views, online, spec.stream, entities=spec.entities, clock=clock)
    else:
        store = InMemoryOnlineStore(views, spec.entities, clock=clock, capacity=store_capacity)
        stream = StreamProcessor(views, store, spec.stream, entities=spec.entities, clock=clock)
    try:
        models = {m.name: load_model(m, root, live, clock=clock) for m in spec.models}
        for ms in spec.models:
            if ms.isolation == "thread":
                loaded = models[ms.name]
                # The worker thread must release the GIL while it computes, or the waiting
                # owner could not time out: isolate a GIL-releasing clone when there is one.
                clone = getattr(loaded.runtime, "clone", None)
                inner = clone() if clone is not None else loaded.runtime
                loaded.runtime = IsolatedRuntime(inner, clock, loaded.label)
        # The wide vector holds every view a ladder model reads, in spec order.
        used: set[str] = set()
        for r in spec.ladder:
            if r.kind is RungKind.MODEL:
                assert r.model is not None
                used.update(c.split(".", 1)[0] for c in models[r.model].manifest.inputs)
        unknown = used - set(views)
        if unknown:
            raise SpecError(f"models read views the service does not declare: {sorted(unknown)}")
        assembler = FeatureAssembler(views, [v.name for v in spec.feature_views if v.name in used], store)
        remote = None
        if online is not None and assembler.entities:
            remote = RemoteFeatures(online, assembler, views, view_policies(views),
                                    breaker=online_breaker(spec.online, clock))
        rungs, outputs = compile_ladder(spec.ladder, models, assembler.columns)
        latency = LatencyRecorder() if record_latency else None
        all_hooks: list[DecisionHook] = [*([latency] if latency is not None else []), *hooks]
        engine = Engine(
            store=store,
            assembler=assembler,
            rungs=rungs,
            output_names=outputs,
            priorities=spec.priorities,
            default_priority=spec.default_priority,
            clock=clock,
            hooks=all_hooks,
            remote=remote,
        )
        engine.warm_up()
        svc = Service(spec, root, views, store, stream, models, engine, latency, online=online)
        if freeze_gc:
            gc.collect()
            gc.freeze()
        return svc
    except BaseException:
        if online is not None:
            online.close()  # its listener thread and connections
        raise


def _open_online(
    spec: ServiceSpec, views: dict[str, FeatureView], clock: Clock, url: str | None
) -> OnlineStore:
    """The Redis store behind a near-cache, its invalidation listener started (the ``redis`` extra)."""
    try:
        from tailguard.features.online.cached import NearCachedStore
        from tailguard.features.online.invalidation import InvalidationMode
        from tailguard.features.online.redis import RedisOnlineStore
    except ImportError as exc:
        raise SpecError("[online] backend = 'redis' needs the redis extra (pip install tailguard[redis]): "
                        f"{exc}", path="$.online.backend") from exc
    o = spec.online
    try:
        inner = RedisOnlineStore(views, spec.entities, service=o.keyspace or spec.name, url=url or o.url,
                                 timeout_s=o.timeout, connect_timeout_s=o.connect_timeout, clock=clock)
    except ValueError as exc:  # redis-py's verdict on a malformed url
        raise SpecError(f"bad online store url {url or o.url!r}: {exc}", path="$.online.url") from exc
    return NearCachedStore(inner, capacity=o.cache_capacity, mode=InvalidationMode(o.invalidation),
                           clock=clock, heartbeat_s=o.heartbeat, entry_ttl_s=o.cache_entry_ttl)


def tune_gc(gen0_threshold: int = 50_000) -> None:
    """Process-wide GC tuning for a serving process: freeze what is loaded and make young
    collections rarer.  Request garbage is freed by reference counting; the cyclic collector
    only has to walk objects that survive, so a higher gen-0 threshold trades nothing for
    fewer pauses.  Call once after loading, in processes that serve decisions."""
    gc.collect()
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, g1, g2)
