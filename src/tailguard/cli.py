"""The ``tailguard`` command.

    tailguard demo [--seconds 20] [--rate 2000] [--no-chaos] [--out runs]
    tailguard inspect SERVICE_DIR          views, versions, models, ladder (loads and verifies)
    tailguard predict SERVICE_DIR KEY [--context JSON] [--priority P] [--budget-us N]
    tailguard drift reference SERVICE_DIR --data FILE [--out PATH]   the drift monitor's reference
    tailguard features ingest|training-set|materialize|backfill|diff ...   the feature store
    tailguard serve SERVICE_DIR [--tcp ...] [--http ...] [--online-url redis://...] ...
    tailguard audit keygen|verify|replay|ship|pull|erase ...   the tamper-evident decision log
    tailguard models list|show|verify|sign SERVICE_DIR ...     model versions (docs/registry.md)
    tailguard optimize SERVICE_DIR MODEL --data FILE [--max-loss X] [--write best]
    tailguard rollout status|shadow|canary|ab|promote|rollback SERVICE_DIR --redis URL
    tailguard stress SCENARIO|all|soak [--seconds S] [--json]
    tailguard check-budget SERVICE_DIR [--rate R] [--shift FILE] [--data FILE --accuracy-floor X]
    tailguard bench --tcp HOST:PORT --rate R ...                the open-loop load generator

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
    if not (tcp or unix or http or args.nats):
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
        audit_signing_key_file=args.audit_signing_key,
        audit_subject_keys=args.audit_subject_keys,
        audit_keep_days=args.audit_keep_days,
        audit_keep_segments=args.audit_keep_segments,
        audit_nats=args.audit_nats,
        audit_nats_stream=args.audit_nats_stream,
        side_process=args.side_process,
        side_transport=args.side_transport,
        side_idle=args.side_idle,
        otlp_endpoint=args.otlp_endpoint,
        trace_sample=0.01 if args.trace_sample is None else args.trace_sample,
        log_json=args.log_json,
        log_level=args.log_level,
        dashboard_interval_s=args.dashboard_interval,
        record_latency=not args.no_latency_recording,
        online_url=args.online_url,
        rollout_redis=args.rollout_redis,
        online_read_cap=not args.no_online_read_cap,
        nats=args.nats,
        nats_subject=args.nats_subject,
        nats_queue=args.nats_queue,
    )
    if (args.nats_subject or args.nats_queue is not None) and not args.nats:
        raise SpecError("--nats-subject and --nats-queue need --nats")
    if args.trace_sample is not None and not args.otlp_endpoint:
        raise SpecError("--trace-sample sets how much to trace: it needs --otlp-endpoint")
    if args.otlp_endpoint:
        from tailguard.observe.tracing import otlp_exporter

        otlp_exporter(args.otlp_endpoint)  # fails here, naming the pip command, without the otel extra
    if (args.audit_dir is None) != (args.audit_key_file is None):
        raise SpecError("--audit-dir and --audit-key-file go together")
    if args.audit_nats and args.audit_dir is None:
        raise SpecError("--audit-nats copies the audit log: it needs --audit-dir")
    audit_extras = (args.audit_signing_key, args.audit_subject_keys, args.audit_keep_days,
                    args.audit_keep_segments)
    if args.audit_dir is None and any(x is not None for x in audit_extras):
        raise SpecError("--audit-signing-key, --audit-subject-keys and --audit-keep-* need --audit-dir")
    return serve(args.service_dir, config, args.ready_file)


def _audit(args: argparse.Namespace) -> int:
    from tailguard.audit.admin import keygen, public_keys
    from tailguard.audit.log import load_key
    from tailguard.audit.verify import verify

    if args.audit_command == "keygen":
        return keygen(args)
    key = load_key(args.key_file) if args.key_file else None  # verify may go without (--public-key)
    pks = public_keys(args)
    if args.audit_command == "verify":
        report = verify(args.directory, key, args.service, public_keys=pks)
        out = report.as_dict()
    elif args.to:
        from tailguard.audit.commands import replay_to

        assert key is not None  # replay requires --key-file
        out = replay_to(args, key)
    else:
        from tailguard.audit.replay import replay
        from tailguard.service import load_service

        if args.service_dir is None:
            raise SpecError("audit replay needs SERVICE_DIR (or --to ENDPOINT)")
        out = replay(args.directory, key, load_service(args.service_dir), public_keys=pks).as_dict()
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0 if out["ok"] else 1


def _drift(args: argparse.Namespace) -> int:
    from tailguard.observe.reference_data import write_service_reference
    from tailguard.service import load_service

    svc = load_service(args.service_dir, freeze_gc=False)
    path = write_service_reference(svc, args.data, args.out, bins=args.bins, sample_size=args.sample_size)
    print(f"wrote the drift reference for {svc.spec.name} to {path}")
    return 0


def _ratio(text: str) -> float:
    """An argparse type: a float in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a ratio is a number in [0, 1], got {text!r}")
    return value


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
    s.add_argument("--audit-signing-key", metavar="PATH",
                   help="sign audit checkpoints with this Ed25519 key (tailguard audit keygen --ed25519)")
    s.add_argument("--audit-subject-keys", metavar="DIR",
                   help="per-subject keys for entities marked pii_mode = 'hash' (kept outside --audit-dir)")
    s.add_argument("--audit-keep-days", type=float, help="remove audit segments closed longer ago than this")
    s.add_argument("--audit-keep-segments", type=int, help="keep at least the newest N audit segments")
    s.add_argument("--audit-nats", metavar="URL", help="copy each worker's audit log to NATS JetStream")
    s.add_argument("--audit-nats-stream", default="TAILGUARD_AUDIT", help="the JetStream stream of the copy")
    s.add_argument("--side-process", action=argparse.BooleanOptionalAction, default=None,
                   help="run the audit log, the drift monitor and the latency folds in a side process per "
                        "worker, off the serving core (default: when audit or drift is on, a C compiler "
                        "is there and the cores outnumber the workers)")
    s.add_argument("--side-transport", choices=("auto", "ring", "pipe"), default="auto",
                   help="how decisions reach the side process: ring (shared memory, written by a "
                        "compiled hook), pipe (msgpack frames), auto (ring when a C compiler is there)")
    s.add_argument("--side-idle", action=argparse.BooleanOptionalAction, default=True,
                   help="with the ring, run the side process under SCHED_IDLE while it keeps up (a worker "
                        "woken by a request takes its CPU back at once; past half a ring of backlog it "
                        "runs at normal priority, nice +5, until it catches up); "
                        "--no-side-idle: nice +5 only")
    s.add_argument("--otlp-endpoint", metavar="URL",
                   help="trace sampled requests: OTLP/HTTP to this collector (e.g. http://127.0.0.1:4318)")
    s.add_argument("--trace-sample", metavar="RATIO", type=_ratio,
                   help="fraction of requests without a sampled traceparent to trace (default 0.01)")
    s.add_argument("--log-json", metavar="PATH|-", help="structured JSON logs to this file ('-': stderr)")
    s.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info",
                   help="lowest level of the JSON log (default info)")
    s.add_argument("--dashboard-interval", metavar="SECONDS", type=float, default=1.0,
                   help="one /dashboard point every this often (default 1; 0: dashboard off)")
    s.add_argument("--no-latency-recording", action="store_true",
                   help="no per-stage latency histograms (/metrics and /dashboard then lack them)")
    s.add_argument("--rollout-redis", metavar="redis://HOST:PORT/DB",
                   help="follow the service's rollout goal in this Redis (tailguard rollout ...; "
                        "docs/rollout.md)")
    s.add_argument("--online-url", metavar="redis://HOST:PORT/DB",
                   help="the shared online store's URL, overriding the spec's [online] url")
    s.add_argument("--no-online-read-cap", action="store_true",
                   help="let a Redis read wait as long as its own request's budget (default: at most "
                        "the tightest class budget, so a bulk read never holds up critical requests)")
    s.add_argument("--nats", metavar="nats://HOST:PORT",
                   help="also serve the binary protocol over NATS request-reply (every worker joins a "
                        "queue group; docs/protocol.md)")
    s.add_argument("--nats-subject", metavar="SUBJECT",
                   help="the request subject (default tailguard.<service>.predict)")
    s.add_argument("--nats-queue", metavar="GROUP",
                   help="the queue group the workers join (default: the service name)")
    s.set_defaults(fn=_serve)
    a = sub.add_parser("audit", help="the tamper-evident decision log: keygen, verify, replay")
    asub = a.add_subparsers(dest="audit_command", required=True)
    k = asub.add_parser("keygen", help="write a new random key")
    k.add_argument("path")
    k.add_argument("--ed25519", action="store_true", help="an Ed25519 signing key (PATH) and PATH.pub")
    v = asub.add_parser("verify", help="check the MAC chain and structure; exit 1 naming the first bad entry")
    v.add_argument("directory")
    v.add_argument("--key-file", help="the MAC key (without it: signatures only, with --public-key)")
    v.add_argument("--public-key", action="append", help="check checkpoint signatures (repeatable)")
    v.add_argument("--service", help="the service name the log must belong to")
    v.add_argument("--json", action="store_true")
    r = asub.add_parser("replay", help="re-run recorded decisions; exit 1 if any output differs")
    r.add_argument("directory")
    r.add_argument("service_dir", nargs="?", help="re-run in process with this service (not with --to)")
    r.add_argument("--key-file", required=True)
    r.add_argument("--public-key", action="append", help="also check checkpoint signatures (repeatable)")
    r.add_argument("--json", action="store_true")
    from tailguard.audit import admin as audit_admin
    from tailguard.audit import commands as audit_commands

    audit_admin.register(asub)

    audit_commands.add_replay_to_arguments(r)
    audit_commands.register(asub)
    for p_ in (k, v, r):
        p_.set_defaults(fn=_audit)
    dr = sub.add_parser("drift", help="drift monitoring: build the training reference")
    dsub = dr.add_subparsers(dest="drift_command", required=True)
    ref = dsub.add_parser("reference", help="summarise training feature rows (and the primary model's "
                          "answers on them) as the drift reference")
    ref.add_argument("service_dir")
    ref.add_argument("--data", required=True, help="training feature rows: .npz or .csv, columns view.field")
    ref.add_argument("--out", help="where to write it (default: the spec's [drift] reference path)")
    ref.add_argument("--bins", type=int, default=10, help="PSI bins per signal (default 10)")
    ref.add_argument("--sample-size", type=int, default=1024,
                     help="KS sample points per signal (default 1024)")
    ref.set_defaults(fn=_drift)
    from tailguard.features.commands import register_ingest
    from tailguard.features.history.commands import register_history

    fe = sub.add_parser("features", help="the feature store: stream ingest, history, training sets, versions")
    fsub = fe.add_subparsers(dest="features_command", required=True)
    register_ingest(fsub)
    register_history(fsub)
    from tailguard.bench.cli import register

    register(sub)
    from tailguard.registry.commands import register_models

    register_models(sub)
    from tailguard.optimize.commands import register_optimize
    register_optimize(sub)
    from tailguard.checkbudget.commands import register_check_budget
    register_check_budget(sub)
    from tailguard.rollout.commands import register_rollout
    register_rollout(sub)
    from tailguard.stress.commands import register_stress
    register_stress(sub)
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
