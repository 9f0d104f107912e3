"""Hedged requests: when to send a second copy, from a window of recent latencies.

A hedge is sent when no reply has come ``delay`` after the first copy was sent, where
``delay`` is the ``quantile`` of the last ``window`` successful latencies (per endpoint, or
per client), never below ``min_delay_s``; until ``min_samples`` latencies are known the delay
is ``initial_delay_s``.  Hedges are throttled to ``burst + max_fraction * requests`` in total,
so an overloaded fleet is not sent twice the load (the classic hedging amplification).

The quantile is recomputed every ``window // 16`` samples, not per request: recording a
latency is a store into a preallocated ring and an integer increment.
"""

from __future__ import annotations

import threading
from array import array
from dataclasses import dataclass

__all__ = ["HedgePolicy", "LatencyWindow"]


@dataclass(frozen=True, slots=True)
class HedgePolicy:
    """When to hedge.  Durations in seconds; ``quantile`` in (0, 1)."""

    quantile: float = 0.95
    window: int = 256
    min_samples: int = 20
    min_delay_s: float = 0.001
    initial_delay_s: float = 0.005
    #: One latency window per endpoint (True) or one for the whole client (False).
    per_endpoint: bool = True
    #: Hedges allowed in total: ``burst + max_fraction * requests``.
    max_fraction: float = 0.1
    burst: int = 10

    def __post_init__(self) -> None:
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"HedgePolicy.quantile must be in (0, 1), got {self.quantile}")
        if self.window < 1 or self.min_samples < 1 or self.burst < 0:
            raise ValueError("HedgePolicy.window and min_samples must be >= 1, burst >= 0")
        if self.min_delay_s < 0 or self.initial_delay_s < 0 or self.max_fraction < 0:
            raise ValueError("HedgePolicy delays and max_fraction must be >= 0")


class LatencyWindow:
    """A ring of the last ``policy.window`` latencies (ns) and the hedge delay derived from it.

    ``record`` may be called from any thread (a lock guards the ring; the sync client
    shares windows between threads); ``delay_ns`` reads a cached integer.
    """

    __slots__ = ("_count", "_delay_ns", "_every", "_lock", "_min_ns", "_policy", "_pos", "_ring")

    def __init__(self, policy: HedgePolicy) -> None:
        self._policy = policy
        self._ring = array("q", [0]) * policy.window
        self._pos = 0
        self._count = 0
        self._every = max(1, policy.window // 16)
        self._min_ns = round(policy.min_delay_s * 1e9)
        self._delay_ns = max(self._min_ns, round(policy.initial_delay_s * 1e9))
        self._lock = threading.Lock()

    def record(self, latency_ns: int) -> None:
        """Add one successful request's latency (send to reply, in ns)."""
        with self._lock:
            self._ring[self._pos] = latency_ns
            self._pos = (self._pos + 1) % len(self._ring)
            self._count += 1
            if self._count >= self._policy.min_samples and self._count % self._every == 0:
                self._refresh()

    def _refresh(self) -> None:
        n = min(self._count, len(self._ring))
        ordered = sorted(self._ring[:n]) if n < len(self._ring) else sorted(self._ring)
        q = ordered[min(n - 1, int(self._policy.quantile * n))]
        self._delay_ns = max(self._min_ns, q)

    def delay_ns(self) -> int:
        """How long after sending to wait before hedging, in ns."""
        return self._delay_ns

    @property
    def samples(self) -> int:
        """Latencies recorded so far."""
        return self._count
