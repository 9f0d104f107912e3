"""What the shared-memory ring's hook costs next to the tap's: one decision copied into a ring.

The trading example (``examples/trading``) decides one request every ``--gap-us`` (busy wait
between them, as an open-loop server idles between requests), and right after each decision
one of these runs on it, in rotation, timed alone with ``time.perf_counter_ns``:

* ``tap``: ``DecisionTap.on_decision`` (``tailguard.observe.tap``: one tuple of the decision and
  two ``bytes`` copies in a preallocated list);
* ``ring_c``: ``DecisionRing.on_decision`` with the compiled writer (``_ringwriter.c``: the
  decision's fields, key, outputs, feature row and write times ``memcpy``'d into a record of a
  shared-memory ring a side process can map);
* ``ring_py``: the same ring with the pure-Python writer (what runs without a C compiler);
* ``noop``: a hook that does nothing (the baseline: a Python call on a cold path).

A reader takes every hook's entries every 256 decisions, as the side path does.  Reported in µs
(p50/p90/p99) and as ``<variant>_over_noop_p50``.

Run: ``.venv/bin/python benchmarks/ring_hook.py [--json] [--calls N] [--gap-us G]``; with
``--json`` the table goes to stderr and the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from support.hooks import hook_parser, time_hooks, trading_service  # noqa: E402

from tailguard.observe.ring import DecisionRing  # noqa: E402
from tailguard.observe.tap import DecisionTap  # noqa: E402

NAMES = ("tap", "ring_c", "ring_py", "noop")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    svc, feed = trading_service(args.seed)
    eng = svc.engine
    tap = DecisionTap(eng, 1 << 16)
    tap_reader = tap.reader()
    ring_c = DecisionRing(eng, args.capacity)
    ring_py = DecisionRing(eng, args.capacity, compiled=False)
    ring_readers = [ring_c.reader(), ring_py.reader()]

    def noop(d: Any) -> None:
        return None

    variants = {"tap": tap.on_decision, "ring_c": ring_c.on_decision, "ring_py": ring_py.on_decision,
                "noop": noop}

    def release() -> None:
        tap_reader.advance(tap.head)
        for r in ring_readers:
            r.advance(r.head())

    times = time_hooks(eng, feed.quotes, variants, release, args.calls, args.gap_us)
    out: dict[str, Any] = {"calls": args.calls, "gap_us": args.gap_us, "capacity": ring_c.capacity,
                           "record_bytes": ring_c.layout.itemsize, "compiled": ring_c.compiled,
                           "fallback_reason": ring_c.fallback_reason,
                           "dropped": ring_c.dropped + ring_py.dropped + tap.dropped,
                           "errors": ring_c.errors + ring_py.errors, **times}
    svc.close()
    names = list(NAMES)
    base = out["noop"]["p50"]
    for k in names[:-1]:
        out[f"{k}_over_noop_p50"] = round(out[k]["p50"] / base, 2)
    out["ring_c_saved_vs_tap_us_p50"] = round(out["tap"]["p50"] - out["ring_c"]["p50"], 3)
    return out


def main() -> None:
    ap = hook_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--capacity", type=int, default=4096, help="records in each ring")
    args = ap.parse_args()
    res = measure(args)
    stream = sys.stderr if args.json else sys.stdout
    print(f"hook after each decision, {args.calls} calls, {args.gap_us:g} us apart (us):", file=stream)
    if not res["compiled"]:
        print(f"  (ring_c fell back to Python: {res['fallback_reason']})", file=stream)
    for k in NAMES:
        r = res[k]
        print(f"  {k:<8} p50 {r['p50']:>7.3f}  p90 {r['p90']:>7.3f}  p99 {r['p99']:>7.3f}", file=stream)
    print("  over noop p50: " + ", ".join(f"{k} {res[f'{k}_over_noop_p50']}" for k in NAMES[:-1])
          + f"; ring_c saves {res['ring_c_saved_vs_tap_us_p50']} us over tap", file=stream)
    if args.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
