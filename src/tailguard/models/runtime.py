"""The runtime protocol every model backend implements, plus service-time estimates.

A runtime takes a C-contiguous float32 matrix (n, n_inputs) and returns a float64 matrix
(n, n_outputs) that is a view of a buffer the runtime owns: valid until its next call, copy
it to keep it.  Runtimes are built once at load (sessions, bindings and buffers made then)
and called by one thread at a time.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["Runtime", "ServiceTime"]


class Runtime(Protocol):
    """A loaded model ready to run."""

    kind: str
    n_inputs: int
    n_outputs: int

    def run(self, x: np.ndarray) -> np.ndarray:
        """Outputs for the rows of ``x`` (float32, C-contiguous, shape (n, n_inputs))."""
        ...


class ServiceTime:
    """Expected service time of a model per batch size, learned online (the TCP RTO rule).

    Per power-of-two batch-size bucket it keeps a smoothed mean and mean deviation of the
    observed time; the expectation is ``mean + 4 * deviation``, a cheap upper quantile.
    A sample over ``spike_factor`` times the expectation is held as a *suspect*: alone it is
    an operating-system hiccup (preemption, page fault) that says nothing about the model and
    is dropped (counted in ``spikes``); if the next sample is slow too and at least half the
    suspect's size, both are folded in and the expectation jumps, so a model that really
    turned slow is skipped from its third call on, while two unrelated hiccups of different
    sizes in a row are both dropped.  Unobserved buckets extrapolate linearly from the
    nearest observed smaller one.
    """

    __slots__ = ("_dev", "_mean", "_suspect", "gain", "spike_factor", "spikes")

    BUCKETS = 17  # batch sizes up to 65536

    def __init__(self, gain: float = 0.125, spike_factor: float = 4.0) -> None:
        self.gain = gain
        self.spike_factor = spike_factor
        self.spikes = 0
        self._mean: list[float] = [0.0] * self.BUCKETS
        self._dev: list[float] = [0.0] * self.BUCKETS
        self._suspect: list[int] = [0] * self.BUCKETS

    @staticmethod
    def bucket(n: int) -> int:
        """The power-of-two bucket of batch size ``n``."""
        return min((n - 1).bit_length(), ServiceTime.BUCKETS - 1)

    def observe(self, n: int, elapsed_ns: int) -> None:
        """Fold one timing of a batch of ``n`` in (spikes held as suspects, see class docstring)."""
        b = (n - 1).bit_length()
        if b >= self.BUCKETS:
            b = self.BUCKETS - 1
        m = self._mean[b]
        if m == 0.0:
            self._mean[b] = float(elapsed_ns)
            self._dev[b] = elapsed_ns / 2.0
            return
        slow = elapsed_ns > self.spike_factor * (m + 4.0 * self._dev[b])
        suspect = self._suspect[b]
        if suspect:
            self._suspect[b] = 0
            if slow and 2 * elapsed_ns >= suspect:
                # Confirmed: a second slow sample of similar size.  The model is slow.
                self._fold(b, suspect)
                self._fold(b, elapsed_ns)
                return
            self.spikes += 1  # the held sample was a one-off: drop it
        if slow:
            self._suspect[b] = elapsed_ns
            return
        self._fold(b, elapsed_ns)

    def reseed(self, n: int, elapsed_ns: int) -> None:
        """Forget the history of ``n``'s bucket and start again from one sample (used after
        a probe proves the model faster than its estimate)."""
        b = min((n - 1).bit_length(), self.BUCKETS - 1)
        self._mean[b] = float(max(elapsed_ns, 1))
        self._dev[b] = elapsed_ns / 2.0
        self._suspect[b] = 0

    def _fold(self, b: int, elapsed_ns: int) -> None:
        m = self._mean[b]
        err = elapsed_ns - m
        g = self.gain
        self._mean[b] = m + g * err
        self._dev[b] += 0.25 * ((err if err > 0 else -err) - self._dev[b])

    def expected_ns(self, n: int) -> float:
        """Expected time for a batch of ``n`` (0.0 when nothing was ever observed)."""
        b = (n - 1).bit_length()
        if b >= self.BUCKETS:
            b = self.BUCKETS - 1
        m = self._mean[b]
        if m != 0.0:
            return m + 4.0 * self._dev[b]
        for lower in range(b - 1, -1, -1):
            if self._mean[lower] != 0.0:
                scale = float(1 << (b - lower))
                return (self._mean[lower] + 4.0 * self._dev[lower]) * scale
        return 0.0

    def mean_ns(self, n: int) -> float:
        """The smoothed mean for a batch of ``n`` (0.0 when never observed), without the
        deviation margin: the likely cost of one more run, e.g. of a probe."""
        b = min((n - 1).bit_length(), self.BUCKETS - 1)
        return self._mean[b]

    def snapshot(self) -> dict[int, tuple[float, float]]:
        """{bucket upper batch size: (mean ns, deviation ns)} for observed buckets."""
        return {1 << b: (self._mean[b], self._dev[b]) for b in range(self.BUCKETS) if self._mean[b]}
