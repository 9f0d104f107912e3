"""Service-time estimates: the TCP RTO rule per batch bucket, with one-off spikes dropped."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tailguard.models.runtime import ServiceTime

US = 1_000


def learned(sample_ns: int = 100 * US, times: int = 20, n: int = 1) -> ServiceTime:
    st_ = ServiceTime()
    for _ in range(times):
        st_.observe(n, sample_ns)
    return st_


def test_nothing_observed_expects_zero() -> None:
    assert ServiceTime().expected_ns(1) == 0.0


def test_first_sample_expects_three_times_it_like_tcp_rto() -> None:
    # RFC 6298: SRTT = R, RTTVAR = R / 2, RTO = SRTT + 4 * RTTVAR = 3R.
    s = ServiceTime()
    s.observe(1, 100 * US)
    assert s.expected_ns(1) == 300 * US


@given(sample=st.integers(min_value=1, max_value=10**9))
def test_steady_samples_never_expect_less_than_the_sample(sample: int) -> None:
    s = ServiceTime()
    for _ in range(50):
        s.observe(1, sample)
        assert s.expected_ns(1) >= sample


def test_steady_samples_tighten_the_expectation() -> None:
    assert learned(times=20).expected_ns(1) < learned(times=2).expected_ns(1)


def test_a_one_off_spike_leaves_the_expectation_unchanged() -> None:
    s = learned()
    before = s.expected_ns(1)
    s.observe(1, 50_000 * US)
    assert s.expected_ns(1) == before


def test_a_spike_followed_by_a_normal_sample_is_counted_and_dropped() -> None:
    s, twin = learned(), learned()
    s.observe(1, 50_000 * US)
    s.observe(1, 100 * US)
    twin.observe(1, 100 * US)
    assert s.spikes == 1
    assert s.expected_ns(1) == twin.expected_ns(1)


def test_two_hiccups_of_different_sizes_in_a_row_are_both_dropped() -> None:
    s, twin = learned(), learned()
    s.observe(1, 100_000 * US)
    s.observe(1, 10_000 * US)  # slow too, but under half the first: another hiccup
    s.observe(1, 100 * US)
    twin.observe(1, 100 * US)
    assert (s.spikes, s.expected_ns(1)) == (2, twin.expected_ns(1))


def test_two_slow_samples_in_a_row_raise_the_expectation_past_the_slow_time() -> None:
    s = learned()
    s.observe(1, 20_000 * US)
    s.observe(1, 20_000 * US)
    assert s.expected_ns(1) >= 20_000 * US


def test_a_slow_but_not_spiky_sample_is_folded_at_once() -> None:
    s = learned()
    before = s.expected_ns(1)
    s.observe(1, int(before * 2))  # under spike_factor x expectation
    assert s.expected_ns(1) > before


def test_buckets_are_learned_separately() -> None:
    s = learned(100 * US, n=1)
    s.observe(64, 900 * US)
    assert s.expected_ns(64) == 3 * 900 * US
    assert s.expected_ns(1) < s.expected_ns(64)


def test_batch_sizes_share_their_power_of_two_bucket() -> None:
    s = ServiceTime()
    s.observe(33, 700 * US)
    assert s.expected_ns(64) == s.expected_ns(33) == s.expected_ns(40)


def test_an_unobserved_bucket_extrapolates_linearly_from_a_smaller_one() -> None:
    s = learned(100 * US, n=1)
    assert s.expected_ns(64) == 64 * s.expected_ns(1)


def test_an_unobserved_bucket_uses_the_nearest_smaller_bucket() -> None:
    s = learned(100 * US, n=1)
    s.observe(4, 200 * US)
    assert s.expected_ns(16) == 4 * s.expected_ns(4)


def test_huge_batches_share_the_last_bucket() -> None:
    s = ServiceTime()
    s.observe(1 << 20, 5_000 * US)
    assert s.expected_ns(1 << 16) == s.expected_ns(1 << 22) == 15_000 * US


def test_reseed_forgets_the_bucket_history() -> None:
    s = learned(20_000 * US)
    s.reseed(1, 100 * US)
    assert s.expected_ns(1) == 300 * US


def test_mean_has_no_deviation_margin() -> None:
    s = ServiceTime()
    s.observe(1, 100 * US)
    assert s.mean_ns(1) == 100 * US


def test_snapshot_lists_observed_buckets_by_upper_batch_size() -> None:
    s = ServiceTime()
    s.observe(1, 100 * US)
    s.observe(50, 400 * US)
    assert set(s.snapshot()) == {1, 64}
