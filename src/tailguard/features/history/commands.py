"""``tailguard features training-set | materialize | backfill | diff``: argparse registration.

``register_history(features_subparsers)`` adds the four commands to the ``features`` group
(the CLI module owns the group).  Each handler returns the exit status; errors are
``TailguardError`` and are printed by ``tailguard.cli.main``.  ``diff`` exits like diff(1):
0 when the two versions are described alike, 1 when something changed.

Version arguments of ``diff``: a descriptor file (``.json``), ``VIEW@VERSION`` read from
``--history``, or a service directory with ``--view`` (the live version's description).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tailguard.errors import FeatureError

__all__ = ["register_history"]


def register_history(features_subparsers: Any) -> None:
    """Add the history commands to the ``tailguard features`` subparsers."""
    sub = features_subparsers
    t = sub.add_parser("training-set", help="point-in-time training set: labels joined with view values "
                       "as known at each label time (DuckDB ASOF joins)")
    t.add_argument("history", help="the history folder")
    t.add_argument("--labels", required=True, help="Parquet file of label rows: entity key column(s) and "
                   "the label time (int ns since the epoch)")
    t.add_argument("--views", help="comma-separated views (default: the views the manifest pins that have "
                   "history)")
    t.add_argument("--manifest", help="a model version's manifest.json (or its folder): join the view "
                   "versions it pins")
    t.add_argument("--version", action="append", default=[], metavar="VIEW=VERSION",
                   help="pin a view version (repeatable; overrides the manifest)")
    t.add_argument("--key", action="append", default=[], metavar="ENTITY=COLUMN",
                   help="label column holding ENTITY's key (default: the column named ENTITY)")
    t.add_argument("--time-column", default="ts_ns", help="label time column (default ts_ns)")
    t.add_argument("--fill", choices=("default", "null"), default="default",
                   help="no value known yet: the view's declared defaults (as serving) or null")
    t.add_argument("--with-times", action="store_true", help="add view.__event_ns and view.__known_ns")
    t.add_argument("--out", required=True, help="output Parquet file")
    t.add_argument("--json", action="store_true")
    t.set_defaults(fn=_training_set)
    for name, helptext in (
        ("materialize", "replay historical events through the stream views into the history "
                        "(values known at their event time)"),
        ("backfill", "like materialize, but every value is known at the run time (no earlier "
                     "training row can see it)"),
    ):
        m = sub.add_parser(name, help=helptext)
        m.add_argument("service_dir")
        m.add_argument("--events", required=True,
                       help="Parquet file or folder of events (e.g. HISTORY/events)")
        m.add_argument("--history", required=True, help="the history folder to write")
        m.add_argument("--views", help="comma-separated stream views (default: all)")
        m.add_argument("--entity", help="apply every event to this entity (default: keys named by entity)")
        m.add_argument("--key-field", help="with --entity: the event field holding the key")
        m.add_argument("--order", choices=("event_time", "arrival", "input"), default="event_time")
        m.add_argument("--start-ns", type=int, help="write only values with event time >= this")
        m.add_argument("--end-ns", type=int, help="write only values with event time < this")
        if name == "backfill":
            m.add_argument("--run-ns", type=int, help="the known time to record (default: now)")
        m.add_argument("--json", action="store_true")
        m.set_defaults(fn=_replay, backfill=name == "backfill")
    d = sub.add_parser("diff", help="what changed between two feature view versions (exit 1 if anything)")
    d.add_argument("a", help="descriptor .json, VIEW@VERSION (with --history) or a service directory")
    d.add_argument("b", help="the same forms as A")
    d.add_argument("--history", help="the history folder holding version descriptors")
    d.add_argument("--view", help="the view, for a service directory or a bare version")
    d.add_argument("--json", action="store_true")
    d.set_defaults(fn=_diff)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k or not v:
            raise FeatureError(f"{what} must look like NAME=VALUE, got {item!r}")
        out[k] = v
    return out


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [v.strip() for v in text.split(",") if v.strip()]


def _training_set(args: argparse.Namespace) -> int:
    from tailguard.features.history.training import manifest_versions, training_set
    from tailguard.features.history.versions import list_versions

    views = _csv(args.views)
    if views is None:
        if args.manifest is None:
            raise FeatureError("give --views or --manifest")
        views = [v for v in manifest_versions(args.manifest) if list_versions(args.history, v)]
    table = training_set(
        args.history, args.labels, views,
        versions=_pairs(args.version, "--version"), manifest=args.manifest,
        keys=_pairs(args.key, "--key"), time_column=args.time_column, fill=args.fill,
        with_times=args.with_times, out=args.out,
    )
    summary = {"out": args.out, "rows": table.num_rows, "columns": table.column_names}
    text = f"{table.num_rows} rows, {table.num_columns} columns -> {args.out}"
    print(json.dumps(summary) if args.json else text)
    return 0


def _replay(args: argparse.Namespace) -> int:
    from tailguard.features.history.materialize import backfill, materialize

    common: dict[str, Any] = dict(
        views=_csv(args.views), entity=args.entity, key_field=args.key_field, order=args.order,
        start_ns=args.start_ns, end_ns=args.end_ns,
    )
    if args.backfill:
        report = backfill(args.service_dir, args.events, args.history, run_ns=args.run_ns, **common)
    else:
        report = materialize(args.service_dir, args.events, args.history, **common)
    if args.json:
        print(json.dumps(report))
    else:
        h, s = report["history"], report["stream"]
        pinned = ", ".join(f"{v}@{ver}" for v, ver in report["views"].items())
        print(f"{s['applied']} events applied, {h['written_rows']} values written "
              f"(known: {report['known']}) for {pinned}")
    return 0


def _descriptor(ref: str, history: str | None, view: str | None) -> dict[str, Any]:
    from tailguard.features.history.materialize import load_views
    from tailguard.features.history.versions import describe, load_descriptor

    path = Path(ref)
    if path.is_file() and path.suffix == ".json":
        d: dict[str, Any] = json.loads(path.read_text())
        return d
    if path.is_dir():
        if view is None:
            raise FeatureError(f"{ref} is a service directory: name the view with --view")
        _, views = load_views(path)
        if view not in views:
            raise FeatureError(f"service {ref} has no view {view!r} (has {sorted(views)})")
        return describe(views[view])
    name, sep, version = ref.partition("@")
    if not sep:
        name, version = view or "", ref
    if not name or history is None:
        raise FeatureError(f"cannot resolve {ref!r}: give a descriptor file, a service directory, "
                           "or VIEW@VERSION with --history")
    return load_descriptor(history, name, version)


def _diff(args: argparse.Namespace) -> int:
    from tailguard.features.history.versions import diff_descriptors

    a = _descriptor(args.a, args.history, args.view)
    b = _descriptor(args.b, args.history, args.view)
    changes = diff_descriptors(a, b)
    if args.json:
        print(json.dumps({"a": a.get("version"), "b": b.get("version"), "changes": changes}))
    elif changes:
        sys.stdout.write("".join(f"{line}\n" for line in changes))
    else:
        print(f"no differences ({a.get('view')}@{a.get('version')})")
    return 1 if changes else 0
