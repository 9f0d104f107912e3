"""What the reply path's one side-path hook costs: ``DecisionTap.on_decision`` on a cold call.

The trading example (``examples/trading``) decides one request every ``--gap-us`` (busy wait
between them, as an open-loop server idles between requests), and right after each decision
one of these runs on it, in rotation, timed alone with ``time.perf_counter_ns``:

* ``tap``: the service's ``DecisionTap`` hook (``tailguard.observe.tap``) — what every
  decision pays once the audit log, the drift monitor or the latency recorder is attached;
* ``tap_with_clocks``: the hook as it was before 2026-12-02 (``ClockedTap`` below: the same
  method with the two clock reads it made per decision, wall-clock and monotonic ns — now
  derived on the side path, ``decided_ns``/``wall_offset``), on a tap of its own;
* ``noop``: a hook that does nothing (the baseline: a Python call on a cold path).

A reader releases the tap's entries every 256 decisions, as the side path does.  Reported in
µs (p50/p90/p99) and as ``tap_over_noop_p50`` / ``tap_with_clocks_over_noop_p50``.

Run: ``.venv/bin/python benchmarks/tap_hook.py [--json] [--calls N] [--gap-us G]``; with
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

from tailguard.observe.tap import DecisionTap  # noqa: E402


class ClockedTap(DecisionTap):
    """``DecisionTap`` with its former reply-path hook: two clock reads more per decision."""

    def on_decision(self, d: Any) -> None:
        h = self.head
        if h >= self._limit:
            self.dropped += 1
            return
        asm = self._assembler
        self.slots[h & self.mask] = (d, self.engine._wide_row.tobytes(), asm._written_row.tobytes(),
                                     asm.filled_ns, self._wall(), self._mono(), 0)
        self.head = h + 1


def measure(args: argparse.Namespace) -> dict[str, Any]:
    svc, feed = trading_service(args.seed)
    eng = svc.engine
    tap, old = DecisionTap(eng, 1 << 16), ClockedTap(eng, 1 << 16)
    readers = [tap.reader(), old.reader()]

    def noop(d: Any) -> None:
        return None

    variants = {"tap": tap.on_decision, "tap_with_clocks": old.on_decision, "noop": noop}

    def release() -> None:
        for r in readers:
            r.advance(r.tap.head)

    out: dict[str, Any] = {"calls": args.calls, "gap_us": args.gap_us,
                           **time_hooks(eng, feed.quotes, variants, release, args.calls, args.gap_us)}
    svc.close()
    base = out["noop"]["p50"]
    out["tap_over_noop_p50"] = round(out["tap"]["p50"] / base, 2)
    out["tap_with_clocks_over_noop_p50"] = round(out["tap_with_clocks"]["p50"] / base, 2)
    out["clocks_saved_us_p50"] = round(out["tap_with_clocks"]["p50"] - out["tap"]["p50"], 3)
    return out


def main() -> None:
    ap = hook_parser(__doc__.split("\n\n")[0])
    args = ap.parse_args()
    res = measure(args)
    stream = sys.stderr if args.json else sys.stdout
    print(f"tap hook after each decision, {args.calls} calls, {args.gap_us:g} us apart (us):", file=stream)
    for k in ("tap", "tap_with_clocks", "noop"):
        r = res[k]
        print(f"  {k:<16} p50 {r['p50']:>7.3f}  p90 {r['p90']:>7.3f}  p99 {r['p99']:>7.3f}", file=stream)
    print(f"  tap / noop p50 {res['tap_over_noop_p50']}, with the clock reads "
          f"{res['tap_with_clocks_over_noop_p50']} ({res['clocks_saved_us_p50']} us saved)", file=stream)
    if args.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
