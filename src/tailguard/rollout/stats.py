"""The A/B test: a mixture sequential probability ratio test (mSPRT) for a difference of means.

A repeated t-test checked after every observation rejects a true null far more often than
its nominal alpha; the mSPRT gives an *always-valid* p-value instead, which may be looked at
after every observation and acted on at any time with the false-positive rate held at alpha.

The statistic (Johari, Koomen, Pekelis and Walsh, "Always Valid Inference: Continuous
Monitoring of A/B Tests", Operations Research 70(3), 2022, preprint arXiv:1512.04922; also
"Peeking at A/B Tests", KDD 2017 — the two-stream normal mSPRT): with
``d = mean_B - mean_A`` after ``n_A`` and ``n_B`` observations, its variance
``V = s_A^2 / n_A + s_B^2 / n_B`` and a normal mixing distribution ``N(0, tau^2)`` over the
true difference,

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 * d^2 / (2 * V * (V + tau^2)))

(with ``n`` pairs and a common variance ``sigma^2`` this is the paper's
``sqrt(2 sigma^2 / (2 sigma^2 + n tau^2)) exp(n^2 tau^2 d^2 / (4 sigma^2 (2 sigma^2 + n tau^2)))``)
is the likelihood ratio of "the difference is theta, theta ~ N(0, tau^2)" against "it is 0",
a martingale under the null; by Ville's inequality ``P(sup Lambda >= 1/alpha) <= alpha``.  The
always-valid p-value is ``p_n = min(p_{n-1}, 1 / Lambda_n)``; the test rejects when
``p_n <= alpha`` and stays rejected.  ``tau`` is the scale of differences worth detecting
(default: the pooled standard deviation, i.e. a one-sigma effect).  Variances are the running
sample variances (Welford); ``burn_in`` observations per arm are collected before the first
look, so the plug-in variance is settled.  With plug-in variances (and arms of unequal size)
the guarantee is asymptotic rather than exact; ``tests/rollout/test_rollout_stats.py``
checks it by simulation (200 A/A streams, a look after every observation).

Owner: whoever feeds outcomes (the side path).  O(1) per observation, no allocation.
"""

from __future__ import annotations

import math

import msgspec

__all__ = ["MSPRT", "MsprtResult", "mixture_lr"]


def mixture_lr(diff: float, var: float, tau2: float) -> float:
    """The mixture likelihood ratio ``Lambda`` for an observed difference ``diff`` of variance
    ``var`` under a ``N(0, tau2)`` mixing distribution (see the module docstring)."""
    if var <= 0.0:
        return math.inf if diff != 0.0 else 1.0
    s = var + tau2
    log_lr = 0.5 * math.log(var / s) + tau2 * diff * diff / (2.0 * var * s)
    return math.exp(min(log_lr, 700.0))


class MsprtResult(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of the test: observations and means per arm, the difference (B - A), the
    always-valid p-value and whether the null (no difference) is rejected at ``alpha``."""

    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    diff: float
    p_value: float
    alpha: float
    rejected: bool


class _Arm:
    __slots__ = ("m2", "mean", "n")

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def var(self) -> float:
        return self.m2 / (self.n - 1) if self.n > 1 else 0.0


class MSPRT:
    """An always-valid two-sample test of equal means (arm ``"A"`` control, ``"B"`` treatment).

    ``alpha``: the false-positive rate under continuous monitoring; ``tau``: the mixing scale
    (None: the pooled sample standard deviation at each look); ``burn_in``: observations per arm
    before the first look."""

    def __init__(self, alpha: float = 0.05, *, tau: float | None = None, burn_in: int = 30) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if tau is not None and not tau > 0.0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.alpha = alpha
        self.tau = tau
        self.burn_in = max(2, burn_in)
        self._a = _Arm()
        self._b = _Arm()
        self.p_value = 1.0
        self.rejected = False

    def add(self, arm: str, x: float) -> bool:
        """Fold in one observation of ``arm`` (``"A"`` or ``"B"``), look, and return whether the
        null is rejected (it stays rejected once it is)."""
        (self._a if arm == "A" else self._b).add(x)
        return self.look()

    def look(self) -> bool:
        """Update the always-valid p-value from the current sums; returns ``rejected``."""
        a, b = self._a, self._b
        if a.n < self.burn_in or b.n < self.burn_in:
            return self.rejected
        va, vb = a.var(), b.var()
        var = va / a.n + vb / b.n
        tau2 = 0.5 * (va + vb) if self.tau is None else self.tau * self.tau
        if tau2 <= 0.0:
            return self.rejected  # constant data so far: nothing to say yet
        lr = mixture_lr(b.mean - a.mean, var, tau2)
        p = 1.0 / lr if lr > 1.0 else 1.0
        if p < self.p_value:
            self.p_value = p
        if self.p_value <= self.alpha:
            self.rejected = True
        return self.rejected

    def result(self) -> MsprtResult:
        """The current state of the test."""
        a, b = self._a, self._b
        return MsprtResult(n_a=a.n, n_b=b.n, mean_a=a.mean, mean_b=b.mean, diff=b.mean - a.mean,
                           p_value=self.p_value, alpha=self.alpha, rejected=self.rejected)
