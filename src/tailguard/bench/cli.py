"""``tailguard bench``: drive a running server open-loop (or sequentially) and report.

    tailguard bench --tcp HOST:PORT --rate 5000 --duration 10 [--poisson]
                    [--mix critical=0.1,normal=0.3,bulk=0.6] [--service DIR] [--json]
    tailguard bench --http HOST:PORT --model trading --entity instrument --rate 2000
    tailguard bench --tcp HOST:PORT --sequential 20000 [--busy-poll]

Names, budgets and request fields come from ``--service DIR`` (the service's spec) when
given; otherwise the binary protocol's Welcome supplies the context fields and budgets are
unknown unless ``--budgets`` says them (without a budget nothing counts as late).  The
report is a table (plus a progress bar on stderr), or with ``--json`` one JSON object on
stdout and nothing else.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tailguard.bench.loadgen import LoadConfig, Target, Workload, run
from tailguard.bench.mix import parse_budgets, parse_mix

__all__ = ["format_report", "register"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to ``subparsers`` (``ArgumentParser.add_subparsers()``)."""
    b: argparse.ArgumentParser = subparsers.add_parser(
        "bench", help="open-loop load against a running server: latency per class, goodput, sheds",
        description=__doc__.split("\n\n")[0])
    to = b.add_mutually_exclusive_group(required=True)
    to.add_argument("--tcp", metavar="HOST:PORT", help="the binary protocol over TCP")
    to.add_argument("--unix", metavar="PATH", help="the binary protocol over a Unix socket")
    to.add_argument("--http", metavar="HOST:PORT", help="Open Inference Protocol v2 over HTTP/1.1")
    how = b.add_mutually_exclusive_group(required=True)
    how.add_argument("--rate", type=float, help="open loop: requests per second")
    how.add_argument("--sequential", type=int, metavar="N", help="closed loop: N requests, one in flight")
    b.add_argument("--duration", type=float, default=10.0, help="open loop: seconds of sending (10)")
    b.add_argument("--warmup", type=float, default=0.0, help="open loop: first seconds not recorded (0)")
    b.add_argument("--warmup-requests", type=int, default=500, help="sequential: unrecorded first requests")
    b.add_argument("--poisson", action="store_true", help="Poisson arrivals (default: fixed rate)")
    b.add_argument("--mix", default="", help="classes by weight, e.g. critical=0.1,normal=0.3,bulk=0.6")
    b.add_argument("--budgets", default="", help="class budgets, e.g. critical=300us,normal=2ms")
    b.add_argument("--service", metavar="DIR", help="service directory: names, budgets, request fields")
    b.add_argument("--model", help="HTTP: the service name in /v2/models/{name}/infer")
    b.add_argument("--entity", help="HTTP: the input that carries the key")
    b.add_argument("--keys", help="entity keys, comma-separated or @FILE (one a line); default k0..k63")
    b.add_argument("--context", help="request context: a JSON object, or a list of them (cycled)")
    b.add_argument("--connections", type=int, default=0, help="connections (binary 4, HTTP 32)")
    b.add_argument("--pipeline", type=int, default=0,
                   help="most requests in flight per connection (binary unbounded, HTTP 1)")
    b.add_argument("--send-budget", action="store_true", help="put each class budget in its requests")
    b.add_argument("--busy-poll", action="store_true", help="sequential: spin on the socket (binary only)")
    b.add_argument("--spin-us", type=float, default=2000.0,
                   help="poll instead of sleeping this long before each send (2000; 0 saves CPU)")
    b.add_argument("--drain-timeout", type=float, default=5.0, help="seconds to wait for the last replies")
    b.add_argument("--seed", type=int, default=1)
    b.add_argument("--client-id", default="tailguard-bench")
    b.add_argument("--json", action="store_true", help="print one JSON object (no table, no progress)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(fn=main)
    return b


def _keys(text: str | None, int_keys: bool) -> list[Any]:
    if not text:
        return list(range(64)) if int_keys else [f"k{i}" for i in range(64)]
    if text.startswith("@"):
        items = [s.strip() for s in Path(text[1:]).read_text().splitlines() if s.strip()]
    else:
        items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise ValueError("--keys names no key")
    return [int(k) for k in items] if int_keys else items


def _contexts(text: str | None, names: list[str]) -> list[dict[str, Any] | None]:
    if text:
        doc = json.loads(text)
        docs = doc if isinstance(doc, list) else [doc]
        if not docs or not all(isinstance(d, dict) for d in docs):
            raise ValueError("--context must be a JSON object or a non-empty list of objects")
        return list(docs)
    return [{n: 1.0 for n in names} if names else None]


def build(args: argparse.Namespace) -> tuple[Target, Workload, LoadConfig]:
    """The run described by parsed ``bench`` arguments."""
    if args.tcp:
        target = Target("tcp", args.tcp)
    elif args.unix:
        target = Target("unix", args.unix)
    else:
        target = Target("http", args.http)
    budgets: dict[str, float] = {}
    entity, model, int_keys, context_names = args.entity or "", args.model or "", False, []
    default_class = ""
    if args.service:
        from tailguard.spec import load_spec

        spec = load_spec(args.service)
        budgets = {p.name: float(p.budget) for p in spec.priorities}
        default_class = spec.default_priority
        model = model or spec.name
        if spec.entities:
            entity = entity or spec.entities[0].name
            int_keys = spec.entities[0].key_dtype == "int64"
        context_names = [i for v in spec.feature_views if v.source.value == "request" for i in v.inputs]
    elif target.kind != "http" and not args.context:
        from tailguard.bench.busypoll import BusyPollClient

        address = f"unix:{target.address}" if target.kind == "unix" else target.address
        probe = BusyPollClient(address, client_id=args.client_id)
        probe.close()
        assert probe.welcome is not None
        context_names = list(probe.welcome.context)
    budgets.update(parse_budgets(args.budgets))
    mix = parse_mix(args.mix or default_class, budgets)
    workload = Workload(mix, _keys(args.keys, int_keys), _contexts(args.context, context_names),
                        entity=entity, model=model, client_id=args.client_id, send_budget=args.send_budget)
    config = LoadConfig(
        rate_hz=args.rate or 0.0, duration_s=args.duration, poisson=args.poisson, warmup_s=args.warmup,
        requests=args.sequential or 0, warmup_requests=args.warmup_requests, connections=args.connections,
        pipeline=args.pipeline, spin_us=args.spin_us, drain_timeout_s=args.drain_timeout,
        busy_poll=args.busy_poll, seed=args.seed, progress=not (args.json or args.no_progress))
    return target, workload, config


def _f(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v / 1e3:.2f}ms" if v >= 1e4 else f"{v:.1f}"


def _budget(us: float | None) -> str:
    if us is None:
        return "-"
    return f"{us:g}us" if us < 1000 else f"{us / 1e3:g}ms"


def format_report(r: dict[str, Any]) -> str:
    """The report as a table: one row per class, then totals and statuses (latencies in µs)."""
    head = f"{r['target']}  {r['mode']}"
    if r["mode"] == "open":
        head += (f" {r['arrivals']} {r['rate_hz']:g}/s for {r['duration_s']:g}s"
                 f" ({r['connections']} connections)")
    else:
        head += f" {r['requests']} requests"
    lines = [head, f"{'class':<10}{'budget':>8}{'sent':>9}{'ok':>9}{'shed':>7}{'errors':>7}{'late':>7}"
                   f"{'goodput/s':>11}{'p50':>9}{'p99':>9}{'p99.9':>9}{'p99.99':>9}{'max':>9}"]
    for name, c in r["classes"].items():
        lat = c["latency_us"]
        budget = _budget(c["budget_us"])
        lines.append(f"{name:<10}{budget:>8}{c['sent']:>9}{c['ok']:>9}{c['shed']:>7}{c['errors']:>7}"
                     f"{c['late']:>7}{c['goodput_rps']:>11.1f}{_f(lat['p50']):>9}{_f(lat['p99']):>9}"
                     f"{_f(lat['p999']):>9}{_f(lat['p9999']):>9}{_f(lat['max']):>9}")
    lat = r["latency_us"]
    lines.append(f"{'all':<10}{'':>8}{r['sent']:>9}{r['ok']:>9}{r['shed']:>7}{r['errors']:>7}{r['late']:>7}"
                 f"{r['goodput_rps']:>11.1f}{_f(lat['p50']):>9}{_f(lat['p99']):>9}{_f(lat['p999']):>9}"
                 f"{_f(lat['p9999']):>9}{_f(lat['max']):>9}")
    lines.append("statuses: " + ", ".join(f"{k} {v}" for k, v in r["statuses"].items()))
    srv = r.get("server_us") or {}
    if srv.get("n"):
        lines.append(f"server's own time (its reply timings, us): p50 {_f(srv['p50'])}, "
                     f"p99 {_f(srv['p99'])}, p99.9 {_f(srv['p999'])}")
    lines.append(f"throughput {r['throughput_rps']:.1f}/s; latency (us) from the intended send time, "
                 f"OK replies; send lag p99 {_f(r['send_lag_us']['p99'])} us")
    if r.get("aborted"):
        lines.append(f"ABORTED: {r['aborted']}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Run the load described by ``args``; print the table or the JSON object."""
    try:
        target, workload, config = build(args)
    except (ValueError, OSError) as exc:
        print(f"tailguard bench: {exc}", file=sys.stderr)
        return 2
    try:
        report = run(target, workload, config)
    except (OSError, TimeoutError) as exc:
        print(f"tailguard bench: cannot reach {target.url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report), flush=True)
    else:
        print(format_report(report))
    return 1 if report.get("aborted") else 0
