"""The cost model: the prior until a bucket is observed, then the learned expectation."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tailguard.scheduler import CostModel

US = 1_000


def prior(rung: int, n: int) -> int:
    return (100 if rung == 0 else 20) * US + n * US


def test_the_prior_answers_before_any_observation() -> None:
    m = CostModel(2, prior)
    assert m.expected_ns(0, 1) == 101 * US
    assert m.expected_ns(1, 7) == 27 * US
    assert not m.observed(0, 1)


def test_without_a_prior_an_unobserved_rung_costs_nothing() -> None:
    assert CostModel(2).expected_ns(0, 64) == 0


def test_an_observed_bucket_uses_the_learned_expectation() -> None:
    m = CostModel(2, prior)
    m.observe(0, 4, 200 * US)
    assert m.observed(0, 3) and m.observed(0, 4)  # same power-of-two bucket
    assert m.expected_ns(0, 4) == 600 * US  # first sample: mean + 4 * (mean / 2)
    assert m.expected_ns(0, 8) == prior(0, 8)  # other buckets still on the prior
    assert m.expected_ns(1, 4) == prior(1, 4)  # other rungs too


def test_learning_converges_on_a_steady_service_time_from_above() -> None:
    m = CostModel(1)
    seen = []
    for _ in range(60):
        m.observe(0, 16, 500 * US)
        seen.append(m.expected_ns(0, 16))
    assert all(s >= 500 * US for s in seen)
    assert seen[-1] < seen[0]
    assert seen[-1] < 510 * US


def test_without_a_prior_unobserved_buckets_extrapolate_from_smaller_ones() -> None:
    m = CostModel(1)
    m.observe(0, 2, 100 * US)
    assert m.expected_ns(0, 8) == 4 * m.expected_ns(0, 2)


def test_version_moves_on_a_first_observation_and_on_invalidate() -> None:
    m = CostModel(1, prior)
    v0 = m.version
    m.observe(0, 1, US)
    m.invalidate()
    assert m.version == v0 + 2


def test_version_stays_while_the_estimate_drifts_less_than_an_eighth() -> None:
    m = CostModel(1, prior)
    for _ in range(50):
        m.observe(0, 1, 10 * US)
    v = m.version
    m.observe(0, 1, 10 * US + 100)
    assert m.version == v


def test_version_moves_once_the_estimate_drifts_more_than_an_eighth() -> None:
    m = CostModel(1, prior)
    for _ in range(50):
        m.observe(0, 1, 10 * US)
    v = m.version
    for _ in range(50):
        m.observe(0, 1, 20 * US)
    assert m.version > v and m.expected_ns(0, 1) >= 20 * US


@given(samples=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 300), st.integers(1, 10**8)),
                        max_size=60))
def test_expected_times_are_positive_ints_once_observed(samples: list[tuple[int, int, int]]) -> None:
    m = CostModel(3)
    for r, n, ns in samples:
        m.observe(r, n, ns)
        v = m.expected_ns(r, n)
        assert isinstance(v, int) and v >= 1


def test_statistics_lists_learned_buckets() -> None:
    m = CostModel(2)
    m.observe(1, 5, 80 * US)
    stats = m.statistics()
    assert stats["rungs"][1] == {8: (80_000.0, 40_000.0)}
    assert stats["rungs"][0] == {}
