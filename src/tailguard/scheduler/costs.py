"""Expected whole-batch service time per (ladder rung, batch size), learned online.

The dispatcher times every batch it runs, from hand-out to the last reply, and reports it
with ``observe``; per rung a ``ServiceTime`` (mean + 4 deviations per power-of-two batch
bucket, one-off spikes dropped) turns those timings into an expectation.  A bucket nobody
has observed yet is answered by the ``prior`` the server passes (the engine's own model
estimates), else by ``ServiceTime``'s linear extrapolation from a smaller observed bucket,
else 0.  Learned values are cached as ints in a table so that ``expected_ns`` costs one
list lookup on the hot path.  All times are integer nanoseconds; one owner thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from tailguard.models.runtime import ServiceTime

__all__ = ["CostModel", "Prior"]

#: ``prior(rung, n) -> ns``: a first guess of a batch's service time before any observation.
Prior = Callable[[int, int], int]

_TOP = ServiceTime.BUCKETS - 1


class CostModel:
    """Expected service time of a batch of ``n`` rows at ``rung`` (ns), learned online.

    ``version`` grows with every change, so a reader may cache derived values and refresh
    them when it moves; call ``invalidate`` when the prior changed its mind (e.g. a model
    reload).  One owner thread.
    """

    __slots__ = ("_learned", "_prior", "_stamp", "_table", "n_rungs", "observations", "version")

    def __init__(self, n_rungs: int, prior: Prior | None = None, *, gain: float = 0.125,
                 spike_factor: float = 4.0) -> None:
        if n_rungs < 1:
            raise ValueError("n_rungs must be >= 1")
        self.n_rungs = n_rungs
        self._prior = prior
        self._learned = [ServiceTime(gain, spike_factor) for _ in range(n_rungs)]
        # 0 marks a bucket never observed at that rung (learned values are >= 1).
        self._table = [[0] * ServiceTime.BUCKETS for _ in range(n_rungs)]
        # The value of each bucket when ``version`` last moved for it.
        self._stamp = [[0] * ServiceTime.BUCKETS for _ in range(n_rungs)]
        self.version = 0
        #: Batches observed per rung (the scheduler's probes look for a rung that went silent).
        self.observations = [0] * n_rungs

    def observe(self, rung: int, n: int, elapsed_ns: int, *, probe: bool = False) -> None:
        """Fold in one measured batch: ``n`` rows at ``rung`` took ``elapsed_ns``.  A ``probe``
        (a batch admitted although predicted late, to re-measure) that comes in well under the
        expectation (by the spike factor) re-seeds it: recovery in one observation."""
        if n < 1:
            raise ValueError("a batch has at least one row")
        st = self._learned[rung]
        self.observations[rung] += 1
        if probe and elapsed_ns * st.spike_factor < st.expected_ns(n):
            st.reseed(n, elapsed_ns)
        else:
            st.observe(n, elapsed_ns)
        b = ServiceTime.bucket(n)
        if st.mean_ns(n) != 0.0:
            new = max(1, math.ceil(st.expected_ns(n)))
            self._table[rung][b] = new
            # Readers cache derived values until ``version`` moves: move it when a value first
            # appears or drifts more than 1/8 from what it was at the last move, not on every
            # observation (a refresh per request cost more than the rest of admission).
            stamp = self._stamp[rung]
            old = stamp[b]
            if not old or abs(new - old) * 8 > old:
                stamp[b] = new
                self.version += 1

    def expected_ns(self, rung: int, n: int) -> int:
        """Expected service time (ns) of a batch of ``n`` rows at ``rung``."""
        b = (n - 1).bit_length()
        if b > _TOP:
            b = _TOP
        v = self._table[rung][b]
        if v:
            return v
        if self._prior is not None:
            return int(self._prior(rung, n))
        return math.ceil(self._learned[rung].expected_ns(n))

    def mean_ns(self, rung: int, n: int) -> int:
        """The learned mean time of a batch of ``n`` rows at ``rung`` (the prior, or the
        expectation, where the bucket has not been observed).  For sums over many batches —
        queue wait, load — where ``expected_ns``'s safety margin would add up."""
        if self.observed(rung, n):
            return max(1, round(self._learned[rung].mean_ns(n)))
        return self.expected_ns(rung, n)

    def observed(self, rung: int, n: int) -> bool:
        """Whether ``n``'s batch bucket at ``rung`` has been observed (else the prior answers)."""
        return self._table[rung][min((n - 1).bit_length(), _TOP)] != 0

    def invalidate(self) -> None:
        """Tell cached readers that the prior changed (bumps ``version``)."""
        self.version += 1

    def statistics(self) -> dict[str, Any]:
        """Per rung, the learned buckets ``{upper batch size: (mean ns, deviation ns)}`` and
        the spikes dropped."""
        return {
            "rungs": {r: st.snapshot() for r, st in enumerate(self._learned)},
            "spikes": sum(st.spikes for st in self._learned),
            "version": self.version,
        }
