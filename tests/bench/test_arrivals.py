"""Intended send times: fixed-rate arithmetic, chunking, Poisson statistics."""

from __future__ import annotations

import numpy as np
import pytest

from tailguard.bench.openloop import ArrivalSchedule


def all_times(s: ArrivalSchedule, chunk: int) -> np.ndarray:
    parts = []
    while not s.done:
        parts.append(s.next_chunk(chunk))
    return np.concatenate(parts)


def test_fixed_rate_times_are_exact_multiples_of_the_period() -> None:
    t = all_times(ArrivalSchedule(5_000, 1000.0, 1.0), 4096)
    assert len(t) == 1000
    assert t[0] == 5_000 and t[1] == 5_000 + 1_000_000 and t[-1] == 5_000 + 999_000_000


def test_fixed_rate_rounding_does_not_accumulate() -> None:
    t = all_times(ArrivalSchedule(0, 3.0, 10.0), 7)  # period 333,333,333.3 ns
    assert len(t) == 30
    assert t[29] == round(29 * 1e9 / 3)


def test_chunking_does_not_change_the_times() -> None:
    a = all_times(ArrivalSchedule(0, 7777.0, 2.0), 100)
    b = all_times(ArrivalSchedule(0, 7777.0, 2.0), 1 << 20)
    assert np.array_equal(a, b)


def test_times_stop_before_the_end_of_the_window() -> None:
    s = ArrivalSchedule(0, 4.0, 1.0)
    assert all_times(s, 10).tolist() == [0, 250_000_000, 500_000_000, 750_000_000]
    assert s.expected == 4
    assert len(s.next_chunk()) == 0


def test_poisson_arrivals_have_the_mean_rate_and_stay_in_the_window() -> None:
    s = ArrivalSchedule(1_000, 20_000.0, 5.0, poisson=True, seed=3)
    t = all_times(s, 5000)
    assert 0.98 * 100_000 < len(t) < 1.02 * 100_000
    assert t[0] > 1_000 and t[-1] < 1_000 + 5_000_000_000
    assert np.all(np.diff(t) >= 0)
    gaps = np.diff(t) / 1e9
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.03  # exponential: cv 1


def test_poisson_is_reproducible_from_its_seed() -> None:
    a = all_times(ArrivalSchedule(0, 1000.0, 1.0, poisson=True, seed=5), 64)
    b = all_times(ArrivalSchedule(0, 1000.0, 1.0, poisson=True, seed=5), 64)
    assert np.array_equal(a, b)


@pytest.mark.parametrize(("rate", "duration"), [(0.0, 1.0), (-1.0, 1.0), (10.0, 0.0)])
def test_a_schedule_needs_a_positive_rate_and_duration(rate: float, duration: float) -> None:
    with pytest.raises(ValueError):
        ArrivalSchedule(0, rate, duration)
