"""Per-endpoint load as the client sees it: a peak EWMA of latency, the copies in flight and
what became of the copies sent; the power-of-two-choices cost derived from them.

The latency estimate is Finagle's "peak EWMA".  Between observations it decays toward zero
by ``exp(-dt / decay)`` (``dt``: time since the last observation), so an endpoint that got no
traffic for a while looks cheaper and is tried again: a replica that was slow once is not
shunned forever.  A reply slower than the decayed estimate replaces it at once (a replica
that turns slow is avoided from its first slow reply); a faster one pulls it down by
``1 - exp(-dt / decay)``.  The estimate thus forgets at a rate set in seconds, whatever the
request rate, and under steady traffic follows the recent peaks.

``cost = (ewma_ns + 1) * (inflight + 1)``: latency times the queue the client has put on it
(the ``+ 1`` keeps in-flight counts comparing when nothing was observed yet).  An endpoint
with no observation (new, or just readmitted) costs the mean estimate of the observed ones
("neutral"), so it gets its share of traffic at once and is neither flooded nor starved.

Thread safety: none, on purpose.  The fields are plain ints and floats updated without a
lock (the sync client updates them from many threads).  Under CPython's GIL an ``x += 1`` on
a slot attribute is not interrupted in practice; where it is (a free-threaded build), an
update may be lost, which skews one endpoint's cost by one request until the next copy
finishes.  The in-flight count is clamped at zero, so a lost increment never makes it
negative; two racing observations keep one of the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tailguard.client._health import EndpointState

__all__ = ["EndpointStats", "Load"]


@dataclass(frozen=True, slots=True)
class EndpointStats:
    """One endpoint as the client sees it (``Client.endpoint_stats()``).

    ``endpoint``: canonical address.  ``state``: up, down or draining.
    ``inflight``: copies sent and not yet answered.  ``ewma_us``: the latency estimate that
    balancing uses, decayed to now, in µs (None: no reply observed since it was added or
    readmitted).  ``requests``: copies sent to it.  ``failures``: copies that failed (server
    failures 30-39, lost connections, timeouts) and failed connects.
    ``consecutive_failures``: failures since its last good reply (it is ejected when they
    reach the client's ``eject_after``).
    """

    endpoint: str
    state: EndpointState
    inflight: int
    ewma_us: float | None
    requests: int
    failures: int
    consecutive_failures: int


class Load:
    """One endpoint's latency estimate and counters (see the module docstring)."""

    __slots__ = ("ewma_ns", "failures", "inflight", "requests", "stamp_ns", "streak")

    def __init__(self) -> None:
        self.inflight = 0
        self.requests = 0
        self.failures = 0
        #: Consecutive failures since the last good reply.
        self.streak = 0
        self.ewma_ns = 0.0
        #: When ``ewma_ns`` was last updated (monotonic ns); 0: never (the cost is neutral).
        self.stamp_ns = 0

    def sent(self) -> None:
        """A copy was sent."""
        self.inflight += 1
        self.requests += 1

    def done(self) -> None:
        """A copy finished (answered, lost or abandoned)."""
        n = self.inflight - 1
        self.inflight = n if n > 0 else 0

    def observe(self, latency_ns: int, now_ns: int, decay_ns: float) -> None:
        """Fold one latency (ns) observed at ``now_ns`` into the peak EWMA."""
        dt = now_ns - self.stamp_ns
        w = math.exp(-dt / decay_ns) if dt > 0 else 1.0
        decayed = self.ewma_ns * w if self.stamp_ns else 0.0
        self.ewma_ns = float(latency_ns) if latency_ns >= decayed else decayed * w + latency_ns * (1.0 - w)
        self.stamp_ns = now_ns

    def estimate_ns(self, now_ns: int, decay_ns: float) -> float:
        """The estimate decayed to ``now_ns`` (0.0 when nothing was observed)."""
        dt = now_ns - self.stamp_ns
        if dt <= 0:
            return self.ewma_ns
        return self.ewma_ns * math.exp(-dt / decay_ns)

    def reset(self) -> None:
        """Forget the latency estimate and the failure streak (the endpoint was readmitted):
        it costs the neutral estimate until its first reply."""
        self.ewma_ns = 0.0
        self.stamp_ns = 0
        self.streak = 0

    def stats(self, label: str, state: EndpointState, now_ns: int, decay_ns: float) -> EndpointStats:
        """A snapshot for ``endpoint_stats()``."""
        ewma = self.estimate_ns(now_ns, decay_ns) / 1e3 if self.stamp_ns else None
        return EndpointStats(label, state, self.inflight, ewma, self.requests, self.failures,
                             self.streak)
