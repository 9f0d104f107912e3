"""Comparing servers fairly: interleaved sequential series, and a maximum-rate search.

``interleaved_sequential`` measures several targets (and in-process calls) one request at a
time in blocks, the order rotated every round, so that a noisy stretch of the machine falls on
all of them alike rather than on whichever ran then.  ``max_rate`` finds the highest open-loop
rate a target sustains with a p99 under a limit and nearly every request answered OK: a
doubling ladder until a step fails, then a few bisection steps.  Both run in the calling
thread (``max_rate`` starts one event loop per step).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tailguard.bench import loadgen
from tailguard.bench.drivers import Channel, Sequential
from tailguard.bench.loadgen import LoadConfig, Target, Workload
from tailguard.bench.mix import parse_mix
from tailguard.bench.recorder import Recorder

__all__ = ["Series", "interleaved_sequential", "max_rate", "open_step"]

#: An in-process series: ``block(recorder, n)`` makes and records ``n`` timed calls.
LocalBlock = Callable[[Recorder, int], None]


@dataclass
class Series:
    """A target measured sequentially; ``share`` divides the block (slow targets get fewer)."""

    target: Target
    workload: Workload
    share: int = 1


async def interleaved_sequential(series: dict[str, Series], local: dict[str, LocalBlock], *, rounds: int,
                                 block: int, warmup: int) -> dict[str, Recorder]:
    """``rounds`` rounds; in each, every series sends ``block // share`` requests one at a time
    and every local series makes ``block`` calls, in an order rotated from round to round.
    ``warmup`` unrecorded requests (calls) each come first.  Returns a recorder per name."""
    recorders: dict[str, Recorder] = {}
    seqs: dict[str, Sequential] = {}
    chans: dict[str, Channel] = {}
    try:
        for name, s in series.items():
            rec = recorders[name] = Recorder(s.workload.mix)
            n_tpl = min(max(len(s.workload.keys), len(s.workload.contexts)), s.workload.max_templates)
            seq = Sequential(s.workload.mix, n_tpl, rec, clock=time.perf_counter_ns)
            (ch,) = await loadgen.open_channels(s.target, s.workload, seq.sink, 1, 1,
                                                server_time=rec.on_server_time)
            seqs[name], chans[name] = seq, ch
            await seq.run(ch, 0, warmup=warmup)
            rec.record_from_ns = 0
        for name, fn in local.items():
            fn(Recorder(parse_mix("")), warmup)
            recorders[name] = Recorder(parse_mix(""))
        names = [*series, *local]
        for r in range(rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                if name in local:
                    local[name](recorders[name], block)
                else:
                    await seqs[name].run(chans[name], max(1, block // series[name].share))
    finally:
        loadgen.close_channels(list(chans.values()))
    return recorders


def open_step(target: Target, workload: Workload, rate: float, *, duration_s: float, warmup_s: float,
              connections: int, p99_limit_us: float, ok_min: float,
              cpu_s: Callable[[], float] | None = None) -> dict[str, Any]:
    """One open-loop run at ``rate``; passes when p99 <= ``p99_limit_us`` and at least ``ok_min``
    of the requests sent were answered OK.  ``cpu_s`` (the server's CPU seconds so far), when
    given, adds the server's CPU time per request: on a shared machine a steadier measure of
    cost than a tail percentile."""
    cpu0 = cpu_s() if cpu_s is not None else 0.0
    rep = loadgen.run(target, workload, LoadConfig(rate_hz=rate, duration_s=duration_s, warmup_s=warmup_s,
                                                    connections=connections, drain_timeout_s=5.0))
    cpu = (cpu_s() - cpu0) if cpu_s is not None else None
    lat = rep["latency_us"]
    ok_frac = rep["ok"] / rep["sent"] if rep["sent"] else 0.0
    passed = (rep["aborted"] is None and lat["p99"] is not None and lat["p99"] <= p99_limit_us
              and ok_frac >= ok_min)
    return {"rate": rate, "pass": passed, "ok_fraction": round(ok_frac, 4), "p50_us": lat["p50"],
            "p99_us": lat["p99"], "p999_us": lat["p999"], "max_us": lat["max"],
            "throughput_rps": rep["throughput_rps"], "send_lag_p99_us": rep["send_lag_us"]["p99"],
            "statuses": rep["statuses"],
            # over every request of the step: warm-up and one priming request per connection too
            "server_cpu_us_per_request": None if cpu is None else
            round(cpu * 1e6 / (rate * duration_s + connections), 1)}


def max_rate(target: Target, workload: Workload, *, start: float, ceiling: float, bisect: int,
             duration_s: float, warmup_s: float, connections: int, p99_limit_us: float = 5000.0,
             ok_min: float = 0.99, retry_failed: int = 1, cpu_s: Callable[[], float] | None = None,
             on_step: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The highest passing rate: double from ``start`` until a step fails (or ``ceiling``),
    then ``bisect`` halvings of the interval (below ``start`` when the first step fails).
    A failing step is run again up to ``retry_failed`` times and passes if any run does: on a
    shared machine one preemption of a few ms can sink a short step's p99.  Returns
    ``max_rps`` (0 when nothing passed), ``first_fail_rps`` and every step run."""
    steps: list[dict[str, Any]] = []

    def step(rate: float) -> bool:
        for _ in range(1 + retry_failed):
            s = open_step(target, workload, rate, duration_s=duration_s, warmup_s=warmup_s,
                          connections=connections, p99_limit_us=p99_limit_us, ok_min=ok_min, cpu_s=cpu_s)
            steps.append(s)
            if on_step is not None:
                on_step(s)
            if s["pass"]:
                return True
            if s["ok_fraction"] < ok_min:
                return False  # refusing work is not noise
        return False

    lo, hi, rate = 0.0, None, start
    while rate <= ceiling:
        if not step(rate):
            hi = rate
            break
        lo, rate = rate, rate * 2
    if hi is not None:
        for _ in range(bisect):
            mid = float(round((lo + hi) / 2, -1)) if lo else hi / 2
            if mid <= lo or mid >= hi:
                break
            if step(mid):
                lo = mid
            else:
                hi = mid
    return {"max_rps": lo, "first_fail_rps": hi, "steps": steps}
