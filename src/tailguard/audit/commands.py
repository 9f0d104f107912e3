"""The off-box and replay-to-a-server parts of ``tailguard audit`` (registered by ``tailguard.cli``).

    tailguard audit ship DIRECTORY --nats URL [--stream S] [--service NAME] [--worker W]
                         [--follow] [--timeout-s 60] [--json]
    tailguard audit pull OUTDIR --nats URL --service NAME [--stream S] [--worker W] [--json]
    tailguard audit replay DIRECTORY --key-file K --to tcp://HOST:PORT [--speed 1]
                         [--context JSON] [--budget-us N] [--max-in-flight 1024] [--per-record]

``ship`` exits 0 once everything on disk is acknowledged (with ``--follow``: after SIGINT or
SIGTERM, having shipped what was on disk), 1 otherwise; ``pull`` exits 1 when the stream
holds nothing for the service.  Runs on the main thread (``ship`` starts the shipper's).
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from typing import Any

from tailguard.audit.admin import print_report

__all__ = ["add_replay_to_arguments", "register", "replay_to"]


def register(asub: Any) -> None:
    """Add ``ship`` and ``pull`` to the ``tailguard audit`` subparsers ``asub``."""
    from tailguard.audit.offbox_layout import DEFAULT_STREAM

    s = asub.add_parser("ship", help="copy an audit log to NATS JetStream (resumes where the copy ends)")
    s.add_argument("directory")
    s.add_argument("--nats", required=True, metavar="URL", help="e.g. nats://127.0.0.1:4222")
    s.add_argument("--stream", default=DEFAULT_STREAM, help=f"JetStream stream (default {DEFAULT_STREAM}; "
                   "created with file storage when missing)")
    s.add_argument("--service", help="service name (default: the log's header)")
    s.add_argument("--worker", help="worker name in the subject (default: the directory's name)")
    s.add_argument("--follow", action="store_true", help="keep shipping new entries until SIGINT/SIGTERM")
    s.add_argument("--timeout-s", type=float, default=60.0,
                   help="give up after this long without catching up (with --follow: at the end)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=_ship)
    p = asub.add_parser("pull", help="rebuild segment files from the JetStream copy")
    p.add_argument("outdir", help="written as OUTDIR/<worker>/ (OUTDIR itself with --worker)")
    p.add_argument("--nats", required=True, metavar="URL")
    p.add_argument("--stream", default=DEFAULT_STREAM)
    p.add_argument("--service", required=True)
    p.add_argument("--worker", help="pull only this worker's log, into OUTDIR itself")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=_pull)


def add_replay_to_arguments(r: argparse.ArgumentParser) -> None:
    """Add the ``--to`` options to ``tailguard audit replay``."""
    r.add_argument("--to", metavar="ENDPOINT",
                   help="send the recorded requests to this server (tcp://HOST:PORT or unix:///path) "
                   "instead of re-running them in process")
    r.add_argument("--speed", type=float, default=1.0,
                   help="with --to: recorded pace times this (2: twice as fast; 0: as fast as possible)")
    r.add_argument("--context", help="with --to: request context (JSON object) for records without one")
    r.add_argument("--budget-us", type=int, help="with --to: budget per request (default: the class budget)")
    r.add_argument("--max-in-flight", type=int, default=1024, help="with --to: outstanding requests at most")
    r.add_argument("--per-record", action="store_true", help="with --to: list every record's outcome")


def replay_to(args: argparse.Namespace, key: bytes) -> dict[str, Any]:
    """Run ``tailguard audit replay --to``; the report as a dict."""
    from tailguard.audit.resend import resend

    ctx = json.loads(args.context) if args.context else None
    report = resend(args.directory, key, args.to, speed=args.speed, context=ctx, budget_us=args.budget_us,
                    max_in_flight=args.max_in_flight)
    return report.as_dict(per_record=args.per_record)


def _ship(args: argparse.Namespace) -> int:
    from tailguard.audit.offbox import AuditShipper

    shipper = AuditShipper(args.directory, args.nats, service=args.service, worker=args.worker,
                           stream=args.stream)
    if args.follow:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        shipper.start()
        while not stop.wait(0.5) and shipper.fatal is None:
            continue
    else:
        shipper.start()
        shipper.flush(args.timeout_s)
    shipper.close(args.timeout_s if args.follow else 0.0)
    ok = shipper.complete and shipper.fatal is None
    print_report({"ok": ok, **shipper.statistics()}, args.json)
    return 0 if ok else 1


def _pull(args: argparse.Namespace) -> int:
    from tailguard.audit.pull import pull

    report = pull(args.nats, args.service, args.outdir, stream=args.stream, worker=args.worker)
    print_report(report.as_dict(), args.json)
    return 0 if report.ok else 1
