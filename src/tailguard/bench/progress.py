"""A one-line progress bar on stderr for load runs (no dependency; off for ``--json``).

Redrawn in place with a carriage return at most every ``interval_s``; when the stream is not a
terminal a plain line is written at most every 5 s instead, so logs stay readable.
"""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["Progress"]


def _us(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1e3:.2f}ms" if v >= 1e3 else f"{v:.0f}us"


class Progress:
    """Progress of a run of ``total_s`` seconds: ``update`` with the figures so far, ``close``."""

    def __init__(self, total_s: float, *, label: str = "", stream: TextIO | None = None,
                 width: int = 24, interval_s: float = 0.5) -> None:
        self.total_s = max(total_s, 1e-9)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = interval_s if self.tty else 5.0
        self._last = 0.0  # the first line after one interval: at 0 s there is nothing to show
        self._drawn = False

    def due(self, elapsed_s: float) -> bool:
        """Whether ``update`` would draw now (callers skip computing figures otherwise)."""
        return elapsed_s - self._last >= self.interval_s

    def line(self, elapsed_s: float, sent: int, ok: int, not_ok: int, mean_us: float | None,
             max_us: float | None) -> str:
        """The text of one progress line (latencies: OK replies since the previous line)."""
        frac = min(max(elapsed_s / self.total_s, 0.0), 1.0)
        filled = round(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        head = f"{self.label} " if self.label else ""
        return (f"{head}[{bar}] {frac:4.0%} {elapsed_s:5.1f}/{self.total_s:.1f}s  sent {sent}  ok {ok}  "
                f"not-ok {not_ok}  latency mean {_us(mean_us)} max {_us(max_us)}")

    def update(self, elapsed_s: float, sent: int, ok: int, not_ok: int, mean_us: float | None,
               max_us: float | None) -> None:
        """Draw the line (if ``interval_s`` has passed since the last one)."""
        if not self.due(elapsed_s):
            return
        self._last = elapsed_s
        text = self.line(elapsed_s, sent, ok, not_ok, mean_us, max_us)
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
            self._drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the line (a newline after the last in-place redraw)."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
