"""The ``tailguard check-budget`` command (registered by ``tailguard.cli``).

    tailguard check-budget SERVICE_DIR [--rate R] [--seconds S] [--batch N] [--priority CLASS]
                           [--shift FILE.toml] [--data LABELLED.parquet|npz --accuracy-floor X]
                           [--label COL] [--entities K] [--max-missed SHARE] [--seed N] [--json]

Prints the per-stage table and the verdict (with ``--json`` also one JSON object as the last
line).  Exit status: 0 when every check passed; 1 naming every failed check; 2 for bad input
(an unknown class, a bad shift file, missing data columns, a service that does not load)
through ``tailguard.cli``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["register_check_budget"]


def register_check_budget(sub: Any) -> None:
    """Add ``check-budget`` to the top-level ``tailguard`` subparsers ``sub``."""
    cb = sub.add_parser("check-budget", help="run a service under synthetic peak load (and a declared "
                        "shift); exit 1 when a p99, the miss rate or the accuracy misses its budget")
    cb.add_argument("service_dir")
    cb.add_argument("--rate", type=float, default=1000.0,
                    help="requests per second, open loop (default 1000)")
    cb.add_argument("--seconds", type=float, default=5.0, help="how long to run (default 5)")
    cb.add_argument("--batch", type=int, default=1, help="entities per request: predict_batch when > 1")
    cb.add_argument("--priority", metavar="CLASS", help="priority class (default: the spec's default)")
    cb.add_argument("--shift", metavar="FILE.toml", help="declared distribution shift (docs/check-budget.md)")
    cb.add_argument("--data", metavar="LABELLED.parquet|npz",
                    help="labelled rows: the primary model's AUC is computed on them, shifted")
    cb.add_argument("--accuracy-floor", type=float, metavar="X", help="fail when that AUC is below X")
    cb.add_argument("--label", default="label", help="the label column of a Parquet file (default label)")
    cb.add_argument("--entities", type=int, default=256, help="synthetic entities in the store (default 256)")
    cb.add_argument("--max-missed", type=float, default=0.001,
                    help="tolerated share of decisions past their deadline (default 0.001)")
    cb.add_argument("--seed", type=int, default=0)
    cb.add_argument("--json", action="store_true", help="also print the report as one JSON object, last")
    cb.set_defaults(fn=_check_budget)


def _check_budget(args: argparse.Namespace) -> int:
    from tailguard.checkbudget.run import Options, run_check_budget

    opts = Options(rate_hz=args.rate, seconds=args.seconds, batch=args.batch, priority=args.priority,
                   shift=args.shift, data=args.data, label=args.label, accuracy_floor=args.accuracy_floor,
                   entities=args.entities, max_missed=args.max_missed, seed=args.seed)
    report = run_check_budget(args.service_dir, opts)
    print(report.table())
    if args.json:
        print(json.dumps(report.as_dict()))
    return report.exit_code
