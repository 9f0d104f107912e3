"""The ``tailguard`` command.

    tailguard demo [--seconds 20] [--rate 2000] [--no-chaos] [--out runs]
    tailguard inspect SERVICE_DIR          views, versions, models, ladder (loads and verifies)
    tailguard predict SERVICE_DIR KEY [--context JSON] [--priority P] [--budget-us N]

Errors of the service (bad spec, missing model files, version mismatch) print one line with
their stable code and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tailguard.errors import SpecError, TailguardError

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from tailguard.demo.report import format_table, write_report
    from tailguard.demo.trading import run_demo

    result = run_demo(
        Path(args.service) if args.service else None,
        seconds=args.seconds,
        rate_hz=args.rate,
        chaos=not args.no_chaos,
        seed=args.seed,
    )
    out, summary = write_report(result, Path(args.out))
    print()
    print(format_table(summary))
    print()
    print(f"report: {out / 'report.txt'}")
    print(f"json:   {out / 'summary.json'}")
    if summary.get("plot"):
        print(f"plot:   {summary['plot']}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from tailguard.service import load_service

    svc = load_service(args.service_dir, freeze_gc=False)
    info: dict[str, Any] = {
        "service": svc.spec.name,
        "feature_views": {
            n: {"version": v.version, "source": v.spec.source.value, "fields": list(v.field_names)}
            for n, v in svc.views.items()
        },
        "models": {
            n: {
                "version": m.version,
                "runtime": m.runtime.kind,
                "content_hash": m.manifest.content_hash,
                "inputs": list(m.manifest.inputs),
                "outputs": list(m.manifest.outputs),
                "expected_us_batch1": round(m.service_time.expected_ns(1) / 1e3, 2),
            }
            for n, m in svc.models.items()
        },
        "ladder": [r.name for r in svc.engine.rungs],
        "priorities": {p.name: {"level": p.level, "budget_us": p.budget * 1e6} for p in svc.spec.priorities},
    }
    print(json.dumps(info, indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from tailguard.service import load_service

    svc = load_service(args.service_dir, freeze_gc=False)
    ctx = json.loads(args.context) if args.context else None
    key: Any = int(args.key) if svc.spec.entities and svc.spec.entities[0].key_dtype == "int64" else args.key
    d = svc.engine.predict(
        key, ctx, priority=args.priority, budget_s=args.budget_us / 1e6 if args.budget_us else None
    )
    print(json.dumps({
        "key": d.key,
        "outputs": dict(zip(d.output_names, d.outputs.tolist(), strict=True)),
        "model_version": d.model_version,
        "rung": d.rung,
        "flags": [f.name for f in type(d.flag) if f and f in d.flag],
        "timings_ns": dict(zip(("ingest", "features", "inference", "delivery", "total"), d.timings_ns,
                               strict=True)),
    }, indent=2))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from tailguard.serve.app import ServeConfig
    from tailguard.serve.workers import serve

    tcp, unix, http = args.tcp, args.unix, args.http
    if not (tcp or unix or http):
        tcp, http = "127.0.0.1:7470", "127.0.0.1:8470"
    config = ServeConfig(
        tcp=tcp,
        unix=unix,
        http=http,
        workers=args.workers,
        max_frame=args.max_frame,
        handshake_timeout_s=args.handshake_timeout,
        drain_timeout_s=args.drain_timeout,
        busy_poll=args.busy_poll,
        reuseport=args.reuseport,
        metrics=args.metrics,
        audit_dir=args.audit_dir,
        audit_key_file=args.audit_key_file,
        audit_fsync_s=args.audit_fsync_ms / 1e3,
    )
    if (args.audit_dir is None) != (args.audit_key_file is None):
        raise SpecError("--audit-dir and --audit-key-file go together")
    return serve(args.service_dir, config, args.ready_file)


def _audit(args: argparse.Namespace) -> int:
    from tailguard.audit.log import load_key, new_key
    from tailguard.audit.verify import verify

    if args.audit_command == "keygen":
        new_key(args.path)
        print(f"wrote a new 32-byte audit key to {args.path} (mode 0600)")
        return 0
    key = load_key(args.key_file)
    if args.audit_command == "verify":
        report = verify(args.directory, key, args.service)
        out = report.as_dict()
    else:
        from tailguard.audit.replay import replay
        from tailguard.service import load_service

        out = replay(args.directory, key, load_service(args.service_dir)).as_dict()
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0 if out["ok"] else 1


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tailguard", description="deadline-aware online inference")
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="the trading demo: replay ticks, score decisions open-loop, report")
    d.add_argument("--service", default=None, help="service directory (default: examples/trading)")
    d.add_argument("--seconds", type=float, default=20.0, help="scored wall time (default 20)")
    d.add_argument("--rate", type=float, default=2000.0, help="decisions per second (default 2000)")
    d.add_argument("--no-chaos", action="store_true", help="do not slow the primary mid-run")
    d.add_argument("--seed", type=int, default=7)
    d.add_argument("--out", default="runs", help="where runs/<timestamp>/ go (default runs)")
    d.set_defaults(fn=_demo)
    i = sub.add_parser("inspect", help="load and verify a service directory, print what it serves")
    i.add_argument("service_dir")
    i.set_defaults(fn=_inspect)
    p = sub.add_parser("predict", help="one decision, printed as JSON")
    p.add_argument("service_dir")
    p.add_argument("key")
    p.add_argument("--context", help="request context as a JSON object")
    p.add_argument("--priority")
    p.add_argument("--budget-us", type=float)
    p.set_defaults(fn=_predict)
    s = sub.add_parser("serve", help="serve a service over the binary protocol (TCP/Unix) and HTTP (OIP v2)")
    s.add_argument("service_dir")
    s.add_argument("--tcp", metavar="HOST:PORT", help="binary protocol over TCP (port 0: any free port)")
    s.add_argument("--unix", metavar="PATH", help="binary protocol over a Unix socket")
    s.add_argument("--http", metavar="HOST:PORT", help="Open Inference Protocol v2 over HTTP, and /metrics")
    s.add_argument("--workers", type=int, default=1, help="serving processes (default 1)")
    s.add_argument("--busy-poll", action="store_true",
                   help="spin on the sockets instead of sleeping in epoll (costs one core per worker)")
    s.add_argument("--reuseport", action="store_true",
                   help="one SO_REUSEPORT socket per worker instead of one shared accept queue")
    s.add_argument("--max-frame", type=int, default=1 << 20, help="largest frame or HTTP body in bytes")
    s.add_argument("--handshake-timeout", type=float, default=10.0,
                   help="seconds a new connection has to say Hello")
    s.add_argument("--drain-timeout", type=float, default=30.0,
                   help="seconds SIGTERM waits for accepted requests to finish")
    s.add_argument("--ready-file", help="write the bound addresses here (JSON) once serving")
    s.add_argument("--metrics", metavar="HOST:PORT",
                   help="one /metrics for all workers (the supervisor scrapes and merges them)")
    s.add_argument("--audit-dir", help="log every decision here (one MAC-chained log per worker)")
    s.add_argument("--audit-key-file", help="the audit key (tailguard audit keygen)")
    s.add_argument("--audit-fsync-ms", type=float, default=50.0,
                   help="fsync the audit log at most this often (0: after every write)")
    s.set_defaults(fn=_serve)
    a = sub.add_parser("audit", help="the tamper-evident decision log: keygen, verify, replay")
    asub = a.add_subparsers(dest="audit_command", required=True)
    k = asub.add_parser("keygen", help="write a new random key")
    k.add_argument("path")
    v = asub.add_parser("verify", help="check the MAC chain and structure; exit 1 naming the first bad entry")
    v.add_argument("directory")
    v.add_argument("--key-file", required=True)
    v.add_argument("--service", help="the service name the log must belong to")
    v.add_argument("--json", action="store_true")
    r = asub.add_parser("replay", help="re-run recorded decisions; exit 1 if any output differs")
    r.add_argument("directory")
    r.add_argument("service_dir")
    r.add_argument("--key-file", required=True)
    r.add_argument("--json", action="store_true")
    for p_ in (k, v, r):
        p_.set_defaults(fn=_audit)
    from tailguard.bench.cli import register

    register(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tailguard`` console script."""
    args = _parser().parse_args(argv)
    try:
        rc: int = args.fn(args)
    except TailguardError as exc:
        print(f"tailguard: error [{exc.code}]: {exc}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
