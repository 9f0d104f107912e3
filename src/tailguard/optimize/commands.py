"""The ``tailguard optimize`` command (registered by ``tailguard.cli``).

    tailguard optimize SERVICE_DIR MODEL --data FILE [--max-loss X] [--write NAME|best] [--json]
                       [--version V] [--label COL] [--prune K,K,...] [--no-distill]
                       [--reps N] [--blocks N]

Prints the side-by-side table (or, with ``--json``, one JSON object as the last line).
Exit status: 0; 1 when ``--write`` wrote nothing (the candidate was refused or skipped, or
no candidate beats the baseline); 2 for service errors (no such model, unreadable validation
data, a version that does not load) through ``tailguard.cli``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register_optimize"]


def _tree_counts(text: str) -> list[int]:
    """An argparse type: comma-separated positive tree counts."""
    try:
        ks = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"tree counts: positive integers separated by commas, not {text!r}")
    return ks


def _non_negative(text: str) -> float:
    """An argparse type: a float >= 0."""
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not v >= 0.0:
        raise argparse.ArgumentTypeError(f"a loss threshold is a number >= 0, got {text!r}")
    return v


def register_optimize(sub: Any) -> None:
    """Add ``optimize`` to the top-level ``tailguard`` subparsers ``sub``."""
    op = sub.add_parser("optimize", help="faster variants of a model version, measured side by side; "
                        "write one as a new version")
    op.add_argument("service_dir")
    op.add_argument("model")
    op.add_argument("--data", required=True,
                    help="validation rows: Parquet with columns view.field and a label, or .npz with X, y")
    op.add_argument("--max-loss", type=_non_negative, default=0.005,
                    help="refuse a candidate losing more: absolute AUC drop, or relative MSE increase "
                         "(default 0.005)")
    op.add_argument("--write", metavar="NAME|best",
                    help="write this accepted candidate (or the fastest accepted one) as the next version")
    op.add_argument("--version", help="the version to optimise (default: the one the spec selects)")
    op.add_argument("--label", default="label", help="the label column of a Parquet file (default label)")
    op.add_argument("--prune", type=_tree_counts, metavar="K,K",
                    help="tree counts to try (default: a half, a quarter and a tenth)")
    op.add_argument("--no-distill", action="store_true", help="do not train a distilled student")
    op.add_argument("--reps", type=int, default=400,
                    help="timed calls per block and batch size (default 400)")
    op.add_argument("--blocks", type=int, default=5, help="interleaved timing blocks (default 5)")
    op.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    op.set_defaults(fn=_optimize)


def _optimize(args: argparse.Namespace) -> int:
    from tailguard.optimize.pipeline import Options, run_optimize

    opts = Options(max_loss=args.max_loss, label=args.label, version=args.version, prune=args.prune,
                   distill=not args.no_distill, reps=max(args.reps, 1), blocks=max(args.blocks, 1),
                   write=args.write)
    report = run_optimize(args.service_dir, args.model, args.data, opts)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(report.table())
        if report.written:
            w = report.written
            print(f"wrote {report.model}/{w['version']} ({w['candidate']}) to {w['directory']}"
                  + (f"; {w['note']}" if "note" in w else ""))
    if report.write_error:
        print(f"tailguard optimize: {report.write_error}", file=sys.stderr)
        return 1
    return 0
