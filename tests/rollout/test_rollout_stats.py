"""The mSPRT: false positives stay under alpha with a look after every observation; real
effects are found; the p-value only goes down."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tailguard.rollout.stats import MSPRT, mixture_lr

ALPHA = 0.05


def run_stream(rng: np.random.Generator, n: int, effect: float, sigma: float = 3.0) -> bool:
    """One A/B stream of ``n`` pairs, the test looked at after every single observation."""
    t = MSPRT(ALPHA)
    xs = rng.normal(10.0, sigma, (n, 2))
    xs[:, 1] += effect
    for a, b in xs.tolist():
        t.add("A", a)
        if t.add("B", b):
            return True
    return False


def test_aa_false_positive_rate_stays_under_alpha_under_continuous_monitoring() -> None:
    rng = np.random.default_rng(20261202)
    rejected = sum(run_stream(rng, 1000, 0.0) for _ in range(200))
    # The bound is alpha; a repeated t-test at 0.05 with 2000 looks rejects in well over 30%.
    assert rejected / 200 <= ALPHA


def test_a_real_effect_is_detected() -> None:
    rng = np.random.default_rng(7)
    found = sum(run_stream(rng, 1000, 0.6) for _ in range(40))  # a 0.2-sigma effect
    assert found / 40 >= 0.8


def test_a_large_effect_is_detected_early_and_stays_detected() -> None:
    t = MSPRT(ALPHA, tau=1.0)
    rng = np.random.default_rng(3)
    n_seen = 0
    for a, b in rng.normal(0.0, 1.0, (2000, 2)).tolist():
        t.add("A", a)
        n_seen += 1
        if t.add("B", b + 1.0):
            break
    assert t.rejected and n_seen < 200
    assert t.result().diff > 0.5
    p = t.p_value
    for _ in range(100):
        t.add("A", 0.0)
        t.add("B", 0.0)
    assert t.rejected and t.p_value <= p
    r = t.result()
    assert r.rejected and r.n_a == r.n_b == n_seen + 100


def test_no_look_before_the_burn_in() -> None:
    t = MSPRT(ALPHA, burn_in=30)
    for _ in range(29):
        t.add("A", 0.0)
        t.add("B", 100.0 + _)
    assert not t.rejected and t.p_value == 1.0


def test_mixture_lr_is_one_at_no_difference_and_grows_with_it() -> None:
    assert mixture_lr(0.0, 1.0, 1.0) == pytest.approx(math.sqrt(0.5))
    assert mixture_lr(3.0, 1.0, 1.0) > mixture_lr(2.0, 1.0, 1.0) > 1.0


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="alpha"):
        MSPRT(1.5)
    with pytest.raises(ValueError, match="tau"):
        MSPRT(0.05, tau=0.0)
