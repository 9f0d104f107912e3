"""What the engine-over-Redis tests share: the eventual view's spec lines, the flags they check
and a readiness wait for the invalidation listener."""

from __future__ import annotations

import time
from collections.abc import Callable

from tailguard.decision import Flag

EVENTUAL = 'ttl = "10s"\nconsistency = "eventual"\nmax_staleness = "500ms"'
UNFED = Flag.FEATURES_UNAVAILABLE
UNCONFIRMED = Flag.UNCONFIRMED_FEATURE


def wait_for(done: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll a condition the listener thread makes true (a readiness wait, not a race fix)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)
