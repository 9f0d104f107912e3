"""The main job: replay ticks through the trading service while scoring decisions open-loop.

``run_demo`` prepares the service (trains its models when artifacts are missing or pin
stale feature versions), loads it, pre-warms the features with a minute of history, then
for ``seconds`` of wall time applies ticks at their (replayed) event times and scores
decisions at intended times of a fixed-rate open-loop schedule.  Each decision reads the
current quote of a random instrument as its request context (0.5% ask for an instrument the
store has never seen).  With ``chaos`` on, the primary model is slowed past the critical
budget for a stretch in the middle of the run, to show the ladder at work; side-path work
(histograms, probes of the skipped model) runs in the gaps between actions.

The figures go to a ``DemoResult``; ``tailguard.demo.report`` turns it into the table, the
JSON and the PNG plot.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.bench.openloop import Pacer, fixed_rate
from tailguard.features.transforms import load_module
from tailguard.models.runtime import Runtime
from tailguard.service import Service, load_service, tune_gc

__all__ = ["DemoResult", "SlowedRuntime", "default_service_dir", "prepare", "run_demo"]

SECOND = 1_000_000_000
UNKNOWN_SYMBOL = "ZZZZ"
HISTORY_S = 60.0
HORIZON_S = 2.0


def default_service_dir() -> Path:
    """examples/trading of the source tree (editable install), else of the working directory."""
    here = Path(__file__).resolve().parents[3] / "examples" / "trading"
    return here if here.is_dir() else Path.cwd() / "examples" / "trading"


class SlowedRuntime:
    """Wraps a runtime; while ``enabled``, every call also takes ``extra_ns`` more (a
    stand-in for a slow dependency or a noisy neighbour).  Clones share the switch, so a
    background probe sees the same slowness.  The serving instance spins (exact, like a model
    computing); a clone sleeps instead, releasing the GIL the way a model computing in C
    would, so a probe thread does not fight the serving thread for it."""

    def __init__(
        self, inner: Runtime, extra_ns: int, _switch: list[bool] | None = None, *, spin: bool = True
    ) -> None:
        self.inner = inner
        self.extra_ns = extra_ns
        self._spin = spin
        self._switch = _switch if _switch is not None else [False]
        self.kind = inner.kind
        self.n_inputs = inner.n_inputs
        self.n_outputs = inner.n_outputs

    @property
    def enabled(self) -> bool:
        """Whether calls are slowed now (shared with clones)."""
        return self._switch[0]

    @enabled.setter
    def enabled(self, on: bool) -> None:
        """Whether calls are slowed now (shared with clones)."""
        self._switch[0] = on

    def clone(self) -> SlowedRuntime:
        """A clone over the inner runtime's clone, sharing the on/off switch."""
        inner_clone = getattr(self.inner, "clone", None)
        inner = inner_clone() if inner_clone is not None else self.inner
        return SlowedRuntime(inner, self.extra_ns, self._switch, spin=False)

    def run(self, x: np.ndarray) -> np.ndarray:
        """The inner runtime's outputs, after the extra time when enabled."""
        if self._switch[0]:
            if not self._spin:
                time.sleep(self.extra_ns / 1e9)
            else:
                end = time.perf_counter_ns() + self.extra_ns
                while time.perf_counter_ns() < end:
                    continue  # busy wait: exact, like a model computing
        return self.inner.run(x)


@dataclass
class DemoResult:
    """Everything a demo run measured (arrays are per decision, in schedule order)."""

    service: Service
    seconds: float
    rate_hz: float
    intended_ns: np.ndarray
    start_ns: np.ndarray
    end_ns: np.ndarray
    p_up: np.ndarray
    rung: np.ndarray
    flags: np.ndarray
    label: np.ndarray
    ticks_applied: int
    chaos_window_s: tuple[float, float] | None
    train_metrics: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0


def prepare(service_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the example's models if they are missing or pin stale feature versions."""
    train = load_module(str(service_dir), "train")
    if train.up_to_date(service_dir):
        log("models are up to date")
        return {}
    log("training models (artifacts missing or feature versions changed) ...")
    metrics: dict[str, Any] = train.train(service_dir, log=log)
    return metrics


def _labels(ticks: dict[str, np.ndarray], sym_idx: np.ndarray, symbols: list[str],
            market_ns: np.ndarray) -> np.ndarray:
    """1 if the instrument's mid HORIZON_S after the decision is above the mid at it; -1 when
    unknown (unknown instrument, no quote yet, or horizon past the data)."""
    mid = 0.5 * (ticks["bid"] + ticks["ask"])
    out = np.full(len(market_ns), -1, dtype=np.int8)
    h = int(HORIZON_S * SECOND)
    for i, sym in enumerate(symbols):
        rows = np.flatnonzero(sym_idx == i)
        sel = np.flatnonzero(ticks["symbol"] == sym)
        if len(rows) == 0 or len(sel) == 0:
            continue
        ts = ticks["ts_ns"][sel]
        now_j = np.searchsorted(ts, market_ns[rows], side="right") - 1
        fut_j = np.searchsorted(ts, market_ns[rows] + h, side="right") - 1
        ok = (now_j >= 0) & (market_ns[rows] + h <= ts[-1])
        out[rows[ok]] = (mid[sel][fut_j[ok]] > mid[sel][now_j[ok]]).astype(np.int8)
    return out


def run_demo(
    service_dir: Path | None = None,
    *,
    seconds: float = 20.0,
    rate_hz: float = 2000.0,
    priority: str = "critical",
    chaos: bool = True,
    seed: int = 7,
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Run the trading demo; see the module docstring."""
    service_dir = (service_dir or default_service_dir()).resolve()
    train_metrics = prepare(service_dir, log)
    svc = load_service(service_dir)
    if svc.spec.drift.enabled:  # [drift] in service.toml: the monitor runs on the demo's side path
        from tailguard.observe.drift import DriftMonitor

        svc.attach(DriftMonitor.from_spec(svc))
    ticks_mod = load_module(str(service_dir), "ticks")
    total_s = HISTORY_S + seconds + HORIZON_S + 1.0
    ticks = ticks_mod.generate_ticks(total_s, seed=seed)
    events = ticks_mod.events(ticks)
    t_market0 = int(ticks["ts_ns"][0]) - int(ticks["ts_ns"][0]) % SECOND
    live_from = t_market0 + int(HISTORY_S * SECOND)
    n_hist = int(np.searchsorted(ticks["ts_ns"], live_from))
    entity = svc.spec.entities[0].name
    quotes: dict[str, dict[str, float]] = {}
    for ev in events[:n_hist]:
        svc.stream.apply(entity, ev["symbol"], ev)
        quotes[ev["symbol"]] = {k: ev[k] for k in ("bid", "ask", "bid_size", "ask_size")}
    log(f"features warmed with {n_hist} ticks ({HISTORY_S:.0f}s of history); "
        f"scoring {rate_hz:.0f} decisions/s open-loop for {seconds:.0f}s")
    symbols = [*sorted(set(ticks["symbol"].tolist())), UNKNOWN_SYMBOL]
    n = int(seconds * rate_hz)
    rng = np.random.default_rng(seed)
    sym_idx = rng.integers(0, len(symbols) - 1, n)
    sym_idx[rng.random(n) < 0.005] = len(symbols) - 1
    primary = svc.models[svc.spec.ladder[0].model or ""]
    slowed = SlowedRuntime(primary.runtime, extra_ns=400_000)
    if chaos:
        primary.runtime = slowed
    chaos_window = (0.40 * seconds, 0.55 * seconds) if chaos else None
    svc.engine.run_side_path()
    if svc.latency is not None:
        svc.latency.reset()
    # Freeze everything built so far (ticks, events, warm states) out of the GC's sight.
    tune_gc()

    pacer = Pacer(svc.run_side_path)
    start = time.perf_counter_ns() + 50_000_000
    intended = fixed_rate(start, rate_hz, n)
    tick_wall = start + (ticks["ts_ns"][n_hist:] - live_from)
    tick_events = events[n_hist:]
    starts = np.zeros(n, dtype=np.int64)
    ends = np.zeros(n, dtype=np.int64)
    p_up = np.zeros(n)
    rung = np.zeros(n, dtype=np.int8)
    flags = np.zeros(n, dtype=np.uint8)
    predict = svc.engine.predict
    apply = svc.stream.apply
    now = time.perf_counter_ns
    j = 0
    n_ticks = len(tick_events)
    last_report = start
    chaos_on = (start + int(chaos_window[0] * SECOND), start + int(chaos_window[1] * SECOND)) \
        if chaos_window else (0, 0)
    default_quote = {"bid": 100.0, "ask": 100.01, "bid_size": 100.0, "ask_size": 100.0}
    for i in range(n):
        t_i = int(intended[i])
        # Ticks due before this decision are applied first, each at its own replay time.
        while j < n_ticks and tick_wall[j] <= t_i:
            pacer.wait_until(int(tick_wall[j]))
            ev = tick_events[j]
            apply(entity, ev["symbol"], ev)
            quotes[ev["symbol"]] = {k: ev[k] for k in ("bid", "ask", "bid_size", "ask_size")}
            j += 1
        pacer.wait_until(t_i)
        slowed.enabled = chaos_on[0] <= t_i < chaos_on[1]
        sym = symbols[sym_idx[i]]
        t0 = now()
        d = predict(sym, quotes.get(sym, default_quote), priority=priority)
        t1 = now()
        starts[i], ends[i] = t0, t1
        p_up[i] = d.outputs[0]
        rung[i] = d.rung_index
        flags[i] = d.flags
        if t1 - last_report >= 2 * SECOND:
            last_report = t1
            done = i + 1
            lat = (ends[:done] - intended[:done])[-4000:]
            log(f"  t={(t1 - start) / SECOND:5.1f}s  decisions={done:6d}  ticks={j:5d}  "
                f"p99={np.percentile(lat, 99) / 1e3:7.1f}us  "
                f"rungs={np.bincount(rung[:done], minlength=len(svc.engine.rungs)).tolist()}"
                + ("  [primary slowed]" if slowed.enabled else ""))
    wall_s = (now() - start) / SECOND
    primary.runtime = slowed.inner
    svc.run_side_path()
    market = live_from + (intended - start)
    labels = _labels(ticks, sym_idx, symbols, market)
    return DemoResult(
        service=svc, seconds=seconds, rate_hz=rate_hz, intended_ns=intended - start,
        start_ns=starts - start, end_ns=ends - start, p_up=p_up, rung=rung, flags=flags,
        label=labels, ticks_applied=j, chaos_window_s=chaos_window,
        train_metrics=train_metrics, wall_s=wall_s,
    )
