"""In-process hot swap: a new model version takes over an engine's rung with no failed request.

``swap_model(service, "primary", "2", owner=inbox)`` runs in three parts:

1. **load** (off the reply path; with ``owner``, on a helper thread that the owner starts and
   lets run only inside windows of its idle time, ``registry.gated.GatedCall``, so it never
   competes with a decision for the GIL; without, on the calling thread): ``load_model``
   reads and verifies the version — artifact hashes, content hash, the repository's
   signature policy, pinned feature versions against the live views — and builds its
   runtime; the outputs and inputs must fit the engine's ladder and feature layout.
2. **warm-up** (the owner thread, in idle time): the declared number of inferences
   (``warmup``, default the spec's) per batch size 1, 8 and 64, on ``recorded_rows`` when
   given, else on synthetic rows made from the feature views' declared defaults.  One
   inference per step of an ``OwnerInbox`` task, each run only when its expected time fits
   the idle gap, so no decision waits for it and no other thread fights the owner for the
   GIL; the timings seed the new version's service-time estimate on the engine's clock, as a
   load-time warm-up does.  Non-finite outputs refuse the version.
3. **switch** (the owner thread, between two decisions): ``Engine.replace_model`` publishes a
   rebuilt ladder in which every rung of that model reads the new version.

Any refusal raises before the switch (``ModelLoadError``, ``ModelSignatureError``,
``FeatureVersionMismatch``, ``ModelSwapError``) and the active version keeps serving; with an
owner, a load refusal reaches the caller once the owner has run the load's windows.
Without ``owner`` the warm-up and the switch run on the calling thread, which is right only
when that thread is the engine's owner or no decision is in flight.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import msgspec
import numpy as np

from tailguard.errors import ModelLoadError
from tailguard.models.repository import LoadedModel, load_model
from tailguard.registry.gated import GatedCall
from tailguard.registry.owner import OwnerInbox
from tailguard.registry.problems import ModelSwapError
from tailguard.resilience.isolation import IsolatedRuntime
from tailguard.spec import ModelSpec, load_spec

if TYPE_CHECKING:
    # Only for the annotation of ``swap_model``'s keywords (typeshed ships it for mypy).
    from typing_extensions import Unpack

    from tailguard.engine import Engine
    from tailguard.features.view import FeatureView
    from tailguard.service import Service

__all__ = [
    "PreparedSwap", "SwapOptions", "SwapReport", "WarmUp", "prepare_swap", "short_gil_slices", "swap_model",
    "synthetic_rows",
]

WARM_BATCHES = (1, 8, 64)

#: The GIL switch interval while a version loads beside a serving thread (see ``short_gil_slices``).
LOAD_SWITCH_INTERVAL_S = 20e-6
_slices_lock = threading.Lock()
_slices_users = 0
_slices_saved = 0.005


@contextmanager
def short_gil_slices(interval_s: float = LOAD_SWITCH_INTERVAL_S) -> Iterator[None]:
    """Lower the interpreter's GIL switch interval to ``interval_s`` for the block (restored
    when the last concurrent user leaves).

    A thread loading a version runs Python between its blocking calls (manifest decoding,
    checks, ctypes set-up).  When the serving thread spins between decisions, as a busy-poll
    loop does, every GIL hand-over to the loader costs it a whole switch interval: with the
    default 5 ms the loader kept the GIL for up to 2.5 ms at a stretch (measured on the trading
    model), and a decision due then waited as long.  With 20 µs, a decision waits about one
    interval per hand-over while the load takes a few ms more (the swap benchmark's load window:
    p99 602 µs at 100 µs, 421 µs at 20 µs).  The interval is process-wide; only the load's few
    milliseconds see it.  (Switching the garbage collector off for the load was tried and made
    things worse: the collection it put off came later, and bigger.)"""
    global _slices_users, _slices_saved
    with _slices_lock:
        if _slices_users == 0:
            _slices_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(interval_s, _slices_saved))
        _slices_users += 1
    try:
        yield
    finally:
        with _slices_lock:
            _slices_users -= 1
            if _slices_users == 0:
                sys.setswitchinterval(_slices_saved)


class SwapOptions(TypedDict, total=False):
    """The keywords ``swap_model`` passes through to ``prepare_swap`` (see there)."""

    service_dir: str | Path | None
    recorded_rows: np.ndarray | None
    warmup: int | None


@dataclass(frozen=True)
class SwapReport:
    """What a swap did: the model, the versions before and after, the rungs switched, the
    warm-up inferences run, ``load_s`` (load and verify, on the calling thread) and
    ``switch_s`` (warm-up in the owner's idle time and the switch, as waited for), seconds."""

    model: str
    old_version: str
    new_version: str
    content_hash: str
    signature_verified: bool
    rungs: tuple[str, ...]
    warmup_inferences: int
    load_s: float
    switch_s: float


def synthetic_rows(inputs: tuple[str, ...], views: Mapping[str, FeatureView], n: int = 64,
                   seed: int = 0) -> np.ndarray:
    """``n`` warm-up rows for a model reading ``inputs`` (``view.field``): row 0 holds the views'
    declared defaults, the others the defaults jittered (so tree models walk more than one
    path).  Shape (n, len(inputs)), float32."""
    base = np.zeros(len(inputs), dtype=np.float32)
    for j, col in enumerate(inputs):
        view_name, field_name = col.split(".", 1)
        view = views.get(view_name)
        if view is not None and field_name in view.field_names:
            base[j] = view.default_f32[view.field_names.index(field_name)]
    rng = np.random.default_rng(seed)
    rows = np.repeat(base[None, :], n, axis=0)
    rows[1:] += (rng.standard_normal((n - 1, len(inputs))) * (np.abs(base) * 0.1 + 0.1)).astype(np.float32)
    return rows


class WarmUp:
    """A version's warm-up as ``Steps``: ``iterations`` inferences per batch size in
    ``WARM_BATCHES`` on ``rows`` (cycled), one per step, each timed on ``now_ns`` into the
    model's service-time estimate.  Non-finite outputs raise ``ModelLoadError``."""

    def __init__(self, model: LoadedModel, rows: np.ndarray, iterations: int,
                 now_ns: Callable[[], int]) -> None:
        n_inputs = model.runtime.n_inputs
        if rows.ndim != 2 or rows.shape[1] != n_inputs or not len(rows):
            raise ModelLoadError(f"model {model.label}: warm-up rows must have shape (n, {n_inputs}), "
                                 f"got {rows.shape}")
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        self.model = model
        self._runtime = model.runtime
        self._now = now_ns
        self._batches = [np.ascontiguousarray(np.tile(rows, (-(-b // len(rows)), 1))[:b])
                         for b in WARM_BATCHES]
        self._plan = [k for k in range(len(WARM_BATCHES)) for _ in range(iterations)]
        self.runs = 0

    def done(self) -> bool:
        """Whether every inference has run."""
        return self.runs >= len(self._plan)

    def next_cost_ns(self) -> int:
        """The model's mean time at the next batch size; before its first run there, the
        estimate extrapolated from a smaller one (0 before any run)."""
        st = self.model.service_time
        b = len(self._batches[self._plan[self.runs]])
        return int(st.mean_ns(b) or st.expected_ns(b))

    def step(self) -> None:
        """Run and time the next inference."""
        x = self._batches[self._plan[self.runs]]
        t0 = self._now()
        out = self._runtime.run(x)
        self.model.service_time.observe(len(x), self._now() - t0)
        self.runs += 1
        if not np.all(np.isfinite(out)):
            raise ModelLoadError(f"model {self.model.label}: non-finite outputs on warm-up rows")

    def run_all(self) -> None:
        """Every remaining step, here and now."""
        while not self.done():
            self.step()


@dataclass(frozen=True)
class _Target:
    engine: Engine
    service_dir: Path
    spec: ModelSpec
    live: dict[str, str]
    views: Mapping[str, FeatureView]
    service: Service | None


def _target(target: Service | Engine, model_name: str, service_dir: str | Path | None) -> _Target:
    from tailguard.engine import Engine

    if isinstance(target, Engine):
        if service_dir is None:
            raise ModelSwapError("swapping on a bare Engine needs service_dir= (where its models live)")
        from tailguard.features.view import compile_views

        root = Path(service_dir).resolve()
        sspec = load_spec(root)
        views: Mapping[str, FeatureView] = compile_views(sspec.feature_views, str(root))
        engine, svc = target, None
    else:
        root, sspec, views, engine, svc = target.directory, target.spec, target.views, target.engine, target
    spec = next((m for m in sspec.models if m.name == model_name), None)
    if spec is None:
        raise ModelSwapError(f"the service declares no model {model_name!r}; "
                             f"models: {[m.name for m in sspec.models]}")
    live = {n: v.version for n, v in views.items()}
    return _Target(engine, root, spec, live, views, svc)


@dataclass
class PreparedSwap:
    """A loaded, verified version waiting for its warm-up (``warm``) and switch (``apply``),
    both on the engine's owner thread."""

    engine: Engine
    model: LoadedModel
    rungs: tuple[str, ...]
    warm: WarmUp
    load_s: float
    service: Service | None = None

    def apply(self) -> str:
        """Owner thread: switch every rung of the model to the new version; returns the
        version it replaced.  All rungs or none: a refusal on a later rung restores the
        earlier ones.  Runs what is left of the warm-up first."""
        self.warm.run_all()
        replaced: list[tuple[str, LoadedModel]] = []
        try:
            for name in self.rungs:
                replaced.append((name, self.engine.replace_model(name, self.model)))
        except BaseException:
            for name, old in reversed(replaced):
                self.engine.replace_model(name, old)
            raise
        if self.service is not None:
            self.service.models[self.model.name] = self.model
        old_model = replaced[0][1]
        if isinstance(old_model.runtime, IsolatedRuntime) and old_model.runtime is not self.model.runtime:
            old_model.runtime.close()
        return old_model.version


def prepare_swap(
    target: Service | Engine,
    model_name: str,
    version: str | None = None,
    *,
    service_dir: str | Path | None = None,
    recorded_rows: np.ndarray | None = None,
    warmup: int | None = None,
) -> PreparedSwap:
    """Load and verify ``model_name`` at ``version`` (None: what the spec's version policy
    selects) on this thread, and plan its warm-up.  A ``Service`` target is checked against
    the views it serves; a bare ``Engine`` needs ``service_dir`` and is checked against the
    views compiled again from there.  ``recorded_rows`` (shape (n, model inputs),
    in the manifest's input order) replace the synthetic warm-up rows; ``warmup`` overrides the
    spec's count of inferences per batch size.  Raises, changing nothing, on any refusal."""
    with short_gil_slices():
        return _prepare(target, model_name, version, service_dir, recorded_rows, warmup)


def _prepare(target: Service | Engine, model_name: str, version: str | None, service_dir: str | Path | None,
             recorded_rows: np.ndarray | None, warmup: int | None) -> PreparedSwap:
    t0 = time.perf_counter()
    tg = _target(target, model_name, service_dir)
    rungs = tuple(r.name for r in tg.engine.rungs if r.model is not None and r.model.name == model_name)
    if not rungs:
        raise ModelSwapError(f"model {model_name!r} answers on no rung of this engine's ladder")
    # The spec's warm-up runs as WarmUp steps on the owner thread, instead of load_model's
    # tight loop here (another thread's inferences would take the GIL from the owner).
    quiet = msgspec.structs.replace(tg.spec, warmup=0)
    model = load_model(quiet, tg.service_dir, tg.live, version=version, clock=tg.engine.clock)
    n = tg.spec.warmup if warmup is None else warmup
    rows = synthetic_rows(model.manifest.inputs, tg.views) if recorded_rows is None else recorded_rows
    if model.manifest.outputs != tg.engine.output_names:
        raise ModelSwapError(f"model {model.label} answers {list(model.manifest.outputs)}, "
                             f"the ladder answers {list(tg.engine.output_names)}")
    missing = sorted(set(model.manifest.inputs) - set(tg.engine.assembler.columns))
    if missing:
        raise ModelSwapError(f"model {model.label} reads {missing}, which the engine does not assemble "
                             "(a new view needs a reload, not a swap)")
    warm = WarmUp(model, rows, n, tg.engine.clock.now_ns)  # binds the runtime before isolation
    if tg.spec.isolation == "thread":
        # As at load (service.load_service): isolate a GIL-releasing clone when there is one.
        clone = getattr(model.runtime, "clone", None)
        inner = clone() if clone is not None else model.runtime
        model.runtime = IsolatedRuntime(inner, tg.engine.clock, model.label)
    return PreparedSwap(tg.engine, model, rungs, warm, time.perf_counter() - t0, tg.service)


class _SwapSteps:
    """The owner's steps of a swap: start the gated load (a thread start, on the owner in its
    idle time, so the submitting thread holds the GIL for microseconds only), windows of the
    load, then the warm-up inferences."""

    START_COST_NS = 200_000

    def __init__(self, load: Callable[[], GatedCall[PreparedSwap]]) -> None:
        self._make = load
        self.load: GatedCall[PreparedSwap] | None = None
        self.prepared: PreparedSwap | None = None

    def _ready(self) -> PreparedSwap | None:
        if self.prepared is None and self.load is not None and self.load.done():
            self.prepared = self.load.result()  # a refusal raises here, on the owner thread
        return self.prepared

    def done(self) -> bool:
        p = self._ready()
        return p is not None and p.warm.done()

    def next_cost_ns(self) -> int:
        if self.load is None:
            return self.START_COST_NS
        p = self._ready()
        return self.load.next_cost_ns() if p is None else p.warm.next_cost_ns()

    def step(self) -> None:
        if self.load is None:
            self.load = self._make()
            return
        p = self._ready()
        if p is None:
            self.load.step()
        else:
            p.warm.step()

    def apply(self) -> str:
        if self.load is None:
            self.load = self._make()
        p = self._ready()
        if p is None:  # the owner ran the final before the load ended (it was overdue)
            self.load.run_all()
            p = self._ready()
            assert p is not None
        return p.apply()

    def abandon(self) -> None:
        """The swap was given up: let a started load finish on its own."""
        if self.load is not None:
            self.load.abandon()


def swap_model(
    target: Service | Engine,
    model_name: str,
    version: str | None = None,
    *,
    owner: OwnerInbox | None = None,
    timeout_s: float = 30.0,
    **options: Unpack[SwapOptions],
) -> SwapReport:
    """Hot-swap ``model_name`` to ``version`` (see the module docstring).  Without ``owner``
    everything runs on this thread.  With ``owner``, ``prepare_swap`` runs on a helper thread
    gated by the owner (``registry.gated.GatedCall``: it runs only in windows the owner opens
    in its idle time, so it never competes with a decision for the GIL), then the warm-up
    steps and the switch run on the owner thread.  ``timeout_s`` bounds the wait for the
    owner; ``options`` (``service_dir``, ``recorded_rows``, ``warmup``) go to ``prepare_swap``.
    Returns a ``SwapReport``; on any refusal raises and the active version keeps serving."""
    t0 = time.perf_counter()
    if owner is None:
        prepared = prepare_swap(target, model_name, version, **options)
        t1 = time.perf_counter()
        try:
            old_version = prepared.apply()
        except BaseException:
            _close_unused(prepared)
            raise
    else:
        steps = _SwapSteps(lambda: GatedCall(lambda: prepare_swap(target, model_name, version, **options),
                                             name=f"tailguard-swap-{model_name}"))
        try:
            old_version = owner.call(steps.apply, timeout_s, steps=steps)
        except BaseException:
            steps.abandon()
            if steps.prepared is not None:
                _close_unused(steps.prepared)
            raise
        prepared = steps.prepared  # type: ignore[assignment]
        assert prepared is not None
        t1 = t0 + prepared.load_s
    m = prepared.model
    return SwapReport(
        model=model_name,
        old_version=old_version,
        new_version=m.version,
        content_hash=m.manifest.content_hash,
        signature_verified=m.signature.verified,
        rungs=prepared.rungs,
        warmup_inferences=prepared.warm.runs,
        load_s=prepared.load_s,
        switch_s=time.perf_counter() - t1,
    )


def _close_unused(prepared: PreparedSwap) -> None:
    if isinstance(prepared.model.runtime, IsolatedRuntime):
        prepared.model.runtime.close()
