"""The ``tailguard features`` commands that live in this package (registered by ``tailguard.cli``).

    tailguard features ingest SERVICE_DIR --nats URL --stream S --subject SUBJ [--durable NAME]
                              [--store|--online-url memory|redis://HOST:PORT/DB] [--format msgpack|json]
                              [--dead-letter-subject SUBJ] [--checkpoint PATH | --no-checkpoint]
                              [--checkpoint-interval-s 1] [--batch 512] [--until-idle] [--json]

``ingest`` runs the feature worker (``tailguard.features.ingest``) on the main thread until
SIGINT/SIGTERM (or, with ``--until-idle``, until the consumer has nothing left), commits what
it applied, prints its statistics and exits 0, or 1 after a fatal error.  ``--store memory``
keeps the rows in the worker's own memory (useful for a dry run or a benchmark);
``redis://...`` writes them to the shared Redis online store that serving processes read
(one pipelined round trip per view per fetched batch).  A message body is one event (a map)
or a batch of events (an array of maps), see ``tailguard.features.ingest``;
``examples/trading/publish.py`` publishes the trading example's ticks either way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

__all__ = ["register_ingest"]


def register_ingest(fsub: Any) -> None:
    """Add ``ingest`` to the ``tailguard features`` subparsers ``fsub``."""
    i = fsub.add_parser("ingest", help="run the feature worker: NATS JetStream events -> online store")
    i.add_argument("service_dir", help="service directory (service.toml and its transforms)")
    i.add_argument("--nats", required=True, metavar="URL", help="e.g. nats://127.0.0.1:4222")
    i.add_argument("--stream", required=True, help="the JetStream stream holding the events")
    i.add_argument("--subject", required=True, help="the subject of the events (the consumer's filter)")
    i.add_argument("--durable", default="tailguard-ingest", help="durable consumer name (one worker each)")
    i.add_argument("--store", "--online-url", dest="store", default="memory", metavar="memory|redis://...",
                   help="where the feature rows go (default: memory, in this process)")
    i.add_argument("--format", choices=("msgpack", "json"), default="msgpack",
                   help="message body: one event (a map) or a batch (an array of maps); default msgpack")
    i.add_argument("--dead-letter-subject", metavar="SUBJ", help="default <subject>.dead")
    i.add_argument("--checkpoint", metavar="PATH",
                   help="state file (default SERVICE_DIR/.tailguard/ingest-<stream>-<durable>.ckpt)")
    i.add_argument("--no-checkpoint", action="store_true",
                   help="keep no checkpoint: every start rebuilds the states from the stream start")
    i.add_argument("--checkpoint-interval-s", type=float, default=1.0, help="commit at most this often")
    i.add_argument("--batch", type=int, default=512, help="messages per pull request")
    i.add_argument("--until-idle", action="store_true", help="exit once the consumer has nothing left")
    i.add_argument("--json", action="store_true", help="print the statistics as one JSON object")
    i.set_defaults(fn=_ingest)


def _store(url: str, spec: Any, views: Any) -> Any:
    if url == "memory":
        from tailguard.features.store import InMemoryOnlineStore

        return InMemoryOnlineStore(views, spec.entities)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from tailguard.features.online.redis import RedisOnlineStore

        # The key prefix serving replicas read (``[online] keyspace``, else the service name).
        keyspace = getattr(getattr(spec, "online", None), "keyspace", None) or spec.name
        return RedisOnlineStore(views, spec.entities, service=keyspace, url=url, timeout_s=2.0,
                                connect_timeout_s=2.0)
    raise SystemExit(f"--store must be 'memory' or a redis:// URL, not {url!r}")


def _ingest(args: argparse.Namespace) -> int:
    try:
        from tailguard.features.ingest import BodyFormat, IngestConfig, IngestWorker
    except ImportError as exc:
        print(f"tailguard features ingest: {exc}", file=sys.stderr)
        return 2
    from tailguard.features.stream import StreamProcessor
    from tailguard.features.view import compile_views
    from tailguard.spec import load_spec

    root = Path(args.service_dir).resolve()
    spec = load_spec(root)
    views = compile_views(spec.feature_views, str(root))
    store = _store(args.store, spec, views)
    checkpoint = None if args.no_checkpoint else Path(
        args.checkpoint or root / ".tailguard" / f"ingest-{args.stream}-{args.durable}.ckpt")
    config = IngestConfig(nats_url=args.nats, stream=args.stream, subject=args.subject, durable=args.durable,
                          body=BodyFormat(args.format), dead_letter_subject=args.dead_letter_subject,
                          checkpoint=checkpoint, checkpoint_interval_s=args.checkpoint_interval_s,
                          batch=args.batch)
    processor = StreamProcessor(views, store, spec.stream, entities=spec.entities, write_through=False)
    worker = IngestWorker(processor, views, config)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, worker.stop)
        await worker.run(until_idle=args.until_idle)

    try:
        asyncio.run(main())
    except Exception as exc:  # kept in worker.fatal and reported below
        print(f"tailguard features ingest: {exc}", file=sys.stderr)
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()
    stats = worker.statistics()
    if args.json:
        print(json.dumps(stats))
    else:
        for k, v in stats.items():
            print(f"{k}: {v}")
    return 0 if worker.fatal is None else 1
