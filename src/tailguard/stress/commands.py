"""The ``tailguard stress`` command (registered by ``tailguard.cli`` through ``register_stress``).

    tailguard stress SCENARIO|all [--seconds S] [--rate R] [--json] [--out DIR] [--service DIR]
        [--keys K1,K2 --context JSON] [--mix critical=0.2,...] [--budgets critical=10ms,...]
        [--hedge] [--late-slack-ms MS]
        [--kill-every S] [--crash-every S] [--slow-factor F] [--slow-floor-ms MS] [--delay-ms MS]
        [--storm-rate R] [--max-frame BYTES]
    tailguard stress soak [--minutes N] [--fault-every S] [--json] [--out DIR] ...

Scenarios: ``worker-kill``, ``worker-crash``, ``redis-restart``, ``nats-restart``, ``slow-model``,
``raising-model``, ``slow-dependency``, ``disconnect-storm``, ``oversized-requests``
(docs/stress.md).  Each writes ``report.md`` and ``report.json`` into ``--out`` (default
``runs/stress/<timestamp>/``); progress goes to stderr; with ``--json`` the last line of
stdout is one JSON object ``{scenario: {lost, late, p99_ms_before, ...}}`` (for ``soak``: the
soak's figures).  Exit status 0 when every check held, 1 when one failed, 2 when a scenario
could not be set up (``StressError``).  The service defaults to ``examples/trading`` (its
models are trained first when missing); ``redis-server`` and ``nats-server`` must be installed
for the scenarios that use them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["main", "register_stress"]

_NAMES = ("worker-kill", "worker-crash", "redis-restart", "nats-restart", "slow-model", "raising-model",
          "slow-dependency", "disconnect-storm", "oversized-requests")


def register_stress(sub: Any) -> None:
    """Add ``stress`` to the top-level ``tailguard`` subparsers ``sub``."""
    st = sub.add_parser("stress", help="fault-injection scenarios and a soak run, with a reliability report")
    add_arguments(st)
    st.set_defaults(fn=_stress)


def add_arguments(st: argparse.ArgumentParser) -> None:
    """The options of ``tailguard stress`` (shared with ``python -m tailguard.stress``)."""
    st.add_argument("scenario", choices=[*_NAMES, "all", "soak"], help="a scenario, all of them, or soak")
    st.add_argument("--seconds", type=float, default=None, help="load duration per scenario (default 12)")
    st.add_argument("--rate", type=float, default=None,
                    help="requests/s of the measured client (default 400)")
    st.add_argument("--json", action="store_true", help="end with one JSON object of the figures")
    st.add_argument("--out", type=Path, help="report directory (default runs/stress/<timestamp>)")
    st.add_argument("--service", type=Path, help="service directory (default examples/trading)")
    st.add_argument("--keys", help="entity keys to ask about, comma-separated (needed with --service)")
    st.add_argument("--context", help="request context as a JSON object (with --service)")
    st.add_argument("--mix", help="class shares, e.g. critical=0.2,normal=0.5,bulk=0.3")
    st.add_argument("--budgets",
                    help="replace class budgets in the service copy, e.g. "
                         "critical=10ms,normal=20ms,bulk=100ms (the trading example's are in-process "
                         "budgets: 300 us critical)")
    st.add_argument("--hedge", action="store_true",
                    help="the measured client hedges slow requests on the other replica "
                         "(tailguard.client.HedgePolicy: after its p95 latency, at most 10 %% extra)")
    st.add_argument("--late-slack-ms", type=float, default=5.0,
                    help="client + loopback allowance added to a class budget before an answer is late")
    st.add_argument("--kill-every", type=float, default=10.0, help="worker-kill: seconds between kills")
    st.add_argument("--crash-every", type=float, default=3.0,
                    help="worker-crash: seconds between worker kills")
    st.add_argument("--slow-factor", type=float, default=10.0, help="slow-model: times slower")
    st.add_argument("--slow-floor-ms", type=float, default=1.0, help="slow-model: at least this much slower")
    st.add_argument("--delay-ms", type=float, default=100.0, help="slow-dependency: Redis reply delay")
    st.add_argument("--storm-rate", type=float, default=200.0, help="disconnect-storm: connections/s")
    st.add_argument("--max-frame", type=int, default=1 << 16,
                    help="oversized-requests: the server's --max-frame")
    st.add_argument("--minutes", type=float, default=5.0, help="soak: duration in minutes")
    st.add_argument("--fault-every", type=float, default=60.0, help="soak: seconds between faults")
    st.add_argument("--minute-s", type=float, default=60.0, help=argparse.SUPPRESS)  # soak: tests shorten it
    st.add_argument("--capacity", type=float, default=None,
                    help="soak: requests/s taken as capacity instead of measuring it")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _target(args: argparse.Namespace) -> Any:
    from tailguard.stress.problems import StressError
    from tailguard.stress.target import Target, trading_target

    if args.service is None or ((args.service / "ticks.py").exists() and not args.keys):
        return trading_target(args.service, _log)
    if not args.keys:
        raise StressError("--service needs --keys (and usually --context)")
    from tailguard.spec import load_spec

    spec = load_spec(args.service)
    context = json.loads(args.context) if args.context else None
    return Target(args.service.resolve(), args.keys.split(","), context,
                  spec.entities[0].name if spec.entities else "")


def _config(args: argparse.Namespace) -> Any:
    from tailguard.stress.runner import StressConfig

    cfg = StressConfig(late_slack_ms=args.late_slack_ms, kill_every_s=args.kill_every,
                       crash_every_s=args.crash_every,
                       slow_factor=args.slow_factor, slow_floor_ms=args.slow_floor_ms, delay_ms=args.delay_ms,
                       storm_rate_hz=args.storm_rate, max_frame=args.max_frame, mix=args.mix,
                       budgets=args.budgets, hedge=args.hedge)
    if args.seconds is not None:
        cfg.seconds = args.seconds
    if args.rate is not None:
        cfg.rate_hz = args.rate
    return cfg


def _meta(argv: list[str]) -> dict[str, Any]:
    import datetime

    return {"command": "tailguard stress " + " ".join(argv), "when": datetime.datetime.now(datetime.UTC)
            .strftime("%Y-%m-%d %H:%M UTC"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}"}


def _stress(args: argparse.Namespace) -> int:
    with _unwind_on_sigterm():
        return _run(args)


@contextlib.contextmanager
def _unwind_on_sigterm() -> Iterator[None]:
    """A SIGTERM (``kill``, a CI job's timeout, systemd) unwinds the run as Ctrl-C does: the
    scenario's ``finally`` blocks stop the replicas, Redis and NATS it started instead of
    leaving them running.  The previous handler comes back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    args.argv = [a for a in sys.argv[1:] if a != "stress"]
    from tailguard.stress.report import default_out_dir, summary, write_report

    out = args.out or default_out_dir()
    target = _target(args)
    cfg = _config(args)
    if args.scenario == "soak":
        from tailguard.stress.soak import run_soak, write_soak

        res = run_soak(target, cfg, out / "work", minutes=args.minutes, minute_s=args.minute_s,
                       fault_every_s=args.fault_every, capacity_hz=args.capacity, log=_log)
        md, _js = write_soak(res, out, _meta(args.argv))
        _log(f"soak report: {md}")
        print(md.read_text())
        if args.json:
            print(json.dumps({"soak": {k: v for k, v in res.items() if k != "minutes"}}))
        return 0 if res["passed"] else 1
    from tailguard.stress.runner import run_scenario
    from tailguard.stress.scenarios import SCENARIOS

    names = list(_NAMES) if args.scenario == "all" else [args.scenario]
    results: list[dict[str, Any]] = []
    for name in names:
        _log(f"stress: {name} ({cfg.seconds:g} s at {cfg.rate_hz:g}/s) ...")
        work = Path(tempfile.mkdtemp(prefix=f"stress-{name}-"))
        try:
            r = run_scenario(SCENARIOS[name](), target, cfg, work)
        except Exception as exc:  # one scenario's setup failure must not hide the others' figures
            if len(names) == 1:
                raise
            r = {"scenario": name, "error": f"{type(exc).__name__}: {exc}"}
        results.append(r)
        _log(f"stress: {name}: " + json.dumps(summary([r])[name]))
    md, _ = write_report(results, out, _meta(args.argv))
    _log(f"report: {md}")
    print(md.read_text().split("\n## ")[0])
    if args.json:
        print(json.dumps(summary(results)))
    return 0 if all(r.get("passed") for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m tailguard.stress ...``: the command without ``tailguard.cli``."""
    from tailguard.errors import TailguardError

    ap = argparse.ArgumentParser(prog="tailguard stress", description=__doc__.split("\n")[0])
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        return _stress(args)
    except TailguardError as exc:
        print(f"tailguard: error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
