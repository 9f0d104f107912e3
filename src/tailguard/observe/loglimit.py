"""Rate limits for log events: a flood of one reason (an overload's rejections, a slow
model's fallbacks) is cut to a few lines per window plus one count of what was suppressed.

Owner: one thread (the event loop): ``allow`` on the reply path, ``closed`` on the side path.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LogLimiter"]


class LogLimiter:
    """At most ``per_window`` events per reason in each ``window_s`` window (per reason,
    starting at its first event); the rest are counted as suppressed.  ``allow`` runs on the
    reply path (a dict lookup and two comparisons); ``closed`` on the side path.  Owner: one
    thread."""

    def __init__(self, per_window: int = 20, window_s: float = 1.0) -> None:
        self.per_window = per_window
        self.window_ns = round(window_s * 1e9)
        #: reason -> [window end ns, events let through, events suppressed]
        self.windows: dict[Any, list[int]] = {}
        self._closed: list[tuple[Any, int]] = []
        self.suppressed = 0

    def allow(self, reason: Any, now_ns: int) -> bool:
        """Whether one more ``reason`` event may be logged at ``now_ns``."""
        w = self.windows.get(reason)
        if w is None or now_ns >= w[0]:
            if w is not None and w[2]:
                self._closed.append((reason, w[2]))
            self.windows[reason] = [now_ns + self.window_ns, 1, 0]
            return True
        if w[1] < self.per_window:
            w[1] += 1
            return True
        w[2] += 1
        self.suppressed += 1
        return False

    def closed(self, now_ns: int) -> list[tuple[Any, int]]:
        """``(reason, suppressed)`` of every window that ended with events suppressed since
        the last call (each window reported once)."""
        out, self._closed = self._closed, []
        for reason, w in self.windows.items():
            if w[2] and now_ns >= w[0]:
                out.append((reason, w[2]))
                w[2] = 0
        return out
