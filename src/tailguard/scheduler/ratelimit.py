"""Per-client rate limits: token buckets in their integer GCRA form, with a bounded table.

A token bucket of rate ``1 / T`` and capacity ``burst`` is kept as one integer, the
*theoretical arrival time* ``tat`` (GCRA, the generic cell rate algorithm of ATM networks):
the bucket is full once ``tat <= now``, and a request is allowed when
``tat - now <= (burst - 1) * T``, which then moves ``tat`` on by ``T``.  That is the same
decision as counting fractional tokens, with one int of state, no floats and no refill
loop, so a check is a few integer operations.  Every time is an injected ``now_ns``
(monotonic integer nanoseconds).  Objects here are owned by one thread (the server's event
loop) and take no locks.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from tailguard.scheduler.policy import RateLimit

__all__ = ["ClientLimiter", "TokenBucket"]

_NEVER = -(1 << 62)  # a tat far in the past: the bucket starts full


class TokenBucket:
    """One token bucket: ``rate.rate_per_s`` tokens per second, at most ``rate.burst`` banked
    (it starts full).  One owner thread."""

    __slots__ = ("_tat", "_tolerance_ns", "interval_ns")

    def __init__(self, rate: RateLimit) -> None:
        self.interval_ns = rate.interval_ns
        self._tolerance_ns = (rate.burst - 1) * self.interval_ns
        self._tat = _NEVER

    def try_acquire(self, now_ns: int) -> int:
        """Take one token at ``now_ns``: 0 when allowed, else the ns until a token is banked
        (nothing is taken then)."""
        tat = self._tat if self._tat > now_ns else now_ns
        wait = tat - now_ns - self._tolerance_ns
        if wait > 0:
            return wait
        self._tat = tat + self.interval_ns
        return 0

    def allow(self, now_ns: int) -> tuple[bool, int]:
        """``(allowed, retry_after_ns)``: ``try_acquire`` as a pair (retry 0 when allowed)."""
        wait = self.try_acquire(now_ns)
        return wait == 0, wait

    def tokens(self, now_ns: int) -> float:
        """Tokens banked at ``now_ns`` (0.0 .. burst; fractional while refilling)."""
        tat = self._tat if self._tat > now_ns else now_ns
        return (self._tolerance_ns + self.interval_ns - (tat - now_ns)) / self.interval_ns


class ClientLimiter:
    """One token bucket per client id, in a table of at most ``max_clients`` entries.

    A client whose bucket is full again (``tat <= now``) is *idle*: forgetting it changes no
    future decision, so idle clients are evicted first.  When a new client finds the table
    full, one sweep drops every idle entry; if the table is still over 7/8 full, the oldest
    entries (first seen longest ago) are dropped too, counted in ``evicted_active`` (such a
    client gets a fresh, full bucket: the price of bounded memory).  The 1/8 headroom makes
    the sweep O(1) amortized per new client.  One owner thread.
    """

    __slots__ = ("_interval_ns", "_tats", "_tolerance_ns", "evicted_active", "evicted_idle",
                 "limited", "max_clients")

    def __init__(self, rate: RateLimit, max_clients: int = 65_536) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be >= 1")
        self._interval_ns = rate.interval_ns
        self._tolerance_ns = (rate.burst - 1) * self._interval_ns
        self._tats: dict[Hashable, int] = {}
        self.max_clients = max_clients
        self.evicted_idle = 0
        self.evicted_active = 0
        self.limited = 0

    def try_acquire(self, client_id: Hashable, now_ns: int) -> int:
        """Take one token from ``client_id``'s bucket at ``now_ns``: 0 when allowed, else the
        ns until its next token (nothing is taken then)."""
        tats = self._tats
        tat = tats.get(client_id)
        if tat is None:
            if len(tats) >= self.max_clients:
                self._evict(now_ns)
            tat = now_ns
        elif tat < now_ns:
            tat = now_ns
        wait = tat - now_ns - self._tolerance_ns
        if wait > 0:
            self.limited += 1
            return wait
        tats[client_id] = tat + self._interval_ns
        return 0

    def allow(self, client_id: Hashable, now_ns: int) -> tuple[bool, int]:
        """``(allowed, retry_after_ns)``: ``try_acquire`` as a pair (retry 0 when allowed)."""
        wait = self.try_acquire(client_id, now_ns)
        return wait == 0, wait

    def __len__(self) -> int:
        return len(self._tats)

    def _evict(self, now_ns: int) -> None:
        tats = self._tats
        idle = [k for k, tat in tats.items() if tat <= now_ns]
        for k in idle:
            del tats[k]
        self.evicted_idle += len(idle)
        keep = self.max_clients - max(1, self.max_clients // 8)
        if len(tats) > keep:
            # dicts iterate in insertion order: the first keys were seen first.
            oldest = [k for k, _ in zip(tats, range(len(tats) - keep), strict=False)]
            for k in oldest:
                del tats[k]
            self.evicted_active += len(oldest)

    def statistics(self) -> dict[str, Any]:
        """Clients tracked, requests limited, clients evicted idle / while active."""
        return {
            "clients": len(self._tats),
            "limited": self.limited,
            "evicted_idle": self.evicted_idle,
            "evicted_active": self.evicted_active,
        }
