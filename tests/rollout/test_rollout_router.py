"""Stable hash routing: sticky per key, close to the share, monotone in the share, salted."""

from __future__ import annotations

import pytest

from tailguard.rollout.router import Router, bucket_of

KEYS = [f"user-{i}" for i in range(20_000)]


def test_the_same_key_always_routes_the_same_way() -> None:
    r = Router(0.3)
    first = [r.to_candidate(k) for k in KEYS[:2000]]
    assert first == [Router(0.3).to_candidate(k) for k in KEYS[:2000]]
    assert bucket_of("AAPL") == bucket_of("AAPL") == 0x0 + bucket_of("AAPL")


@pytest.mark.parametrize("share", [0.01, 0.05, 0.25, 0.5])
def test_the_routed_share_is_close_to_the_declared_one(share: float) -> None:
    r = Router(share)
    got = sum(r.to_candidate(k) for k in KEYS) / len(KEYS)
    assert abs(got - share) < 4 * (share * (1 - share) / len(KEYS)) ** 0.5 + 1e-3


def test_a_key_in_the_canary_stays_in_as_the_share_grows() -> None:
    small, big = Router(0.05), Router(0.25)
    assert all(big.to_candidate(k) for k in KEYS if small.to_candidate(k))


def test_zero_and_one_route_nothing_and_everything() -> None:
    assert not any(Router(0.0).to_candidate(k) for k in KEYS[:1000])
    assert all(Router(1.0).to_candidate(k) for k in KEYS[:1000])


def test_a_new_salt_draws_a_new_population() -> None:
    a, b = Router(0.5, "one"), Router(0.5, "two")
    same = sum(a.to_candidate(k) == b.to_candidate(k) for k in KEYS) / len(KEYS)
    assert 0.45 < same < 0.55


def test_key_types_hash_by_value() -> None:
    assert bucket_of(12345) == bucket_of(12345)
    assert bucket_of(12345) != bucket_of("12345")
    assert bucket_of({"user": "u1", "item": "i2"}) == bucket_of({"item": "i2", "user": "u1"})
    assert bucket_of(b"raw") == bucket_of(b"raw")


def test_a_share_outside_0_1_is_refused() -> None:
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        Router(1.5)


def test_the_router_agrees_with_bucket_of() -> None:
    r = Router(0.37, "s")
    assert all(r.to_candidate(k) == (bucket_of(k, b"s") < int(0.37 * 2**64)) for k in KEYS[:2000])
