"""Token buckets (GCRA form): bursts, refill, exact retry-after; a bounded client table."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tailguard.scheduler import ClientLimiter, RateLimit, TokenBucket
from tailguard.testing import FakeClock

MS = 1_000_000


def test_a_new_bucket_allows_a_full_burst_then_refuses() -> None:
    b = TokenBucket(RateLimit(1000.0, 3))
    now = FakeClock().now_ns()
    assert [b.try_acquire(now) for _ in range(3)] == [0, 0, 0]
    assert b.try_acquire(now) > 0


def test_retry_after_is_the_time_to_the_next_token() -> None:
    clock = FakeClock()
    b = TokenBucket(RateLimit(1000.0, 1))  # one token per ms
    assert b.try_acquire(clock.now_ns()) == 0
    clock.advance(ns=300_000)
    assert b.try_acquire(clock.now_ns()) == 700_000
    clock.advance(ns=699_999)
    assert b.try_acquire(clock.now_ns()) == 1
    clock.advance(ns=1)
    assert b.try_acquire(clock.now_ns()) == 0


def test_a_refused_request_takes_no_token() -> None:
    clock = FakeClock()
    b = TokenBucket(RateLimit(1000.0, 1))
    b.try_acquire(clock.now_ns())
    for _ in range(10):
        b.try_acquire(clock.now_ns())
    clock.advance(ns=MS)
    assert b.try_acquire(clock.now_ns()) == 0


def test_refill_banks_one_token_per_interval_up_to_the_burst() -> None:
    clock = FakeClock()
    b = TokenBucket(RateLimit(1000.0, 4))
    for _ in range(4):
        b.try_acquire(clock.now_ns())
    assert b.tokens(clock.now_ns()) == 0.0
    clock.advance(ns=2 * MS + MS // 2)
    assert b.tokens(clock.now_ns()) == 2.5
    clock.advance(ns=100 * MS)
    assert b.tokens(clock.now_ns()) == 4.0


def test_allow_returns_the_pair() -> None:
    b = TokenBucket(RateLimit(1.0, 1))
    assert b.allow(0) == (True, 0)
    assert b.allow(0) == (False, 1_000_000_000)


@given(
    rate=st.sampled_from([10.0, 1000.0, 33_333.0]),
    burst=st.integers(1, 8),
    gaps=st.lists(st.integers(0, 200_000), max_size=200),
)
def test_gcra_decides_like_a_token_counting_bucket(rate: float, burst: int, gaps: list[int]) -> None:
    b = TokenBucket(RateLimit(rate, burst))
    interval = RateLimit(rate, burst).interval_ns
    tokens_ns = burst * interval  # reference: banked tokens, in ns of refill
    now = last = 10**9
    for g in gaps:
        now += g
        tokens_ns = min(burst * interval, tokens_ns + (now - last))
        last = now
        expect = tokens_ns >= interval
        wait = b.try_acquire(now)
        assert (wait == 0) == expect
        if expect:
            tokens_ns -= interval
        else:
            assert wait == interval - tokens_ns


def test_clients_have_independent_buckets() -> None:
    lim = ClientLimiter(RateLimit(1.0, 1))
    assert lim.try_acquire("a", 0) == 0
    assert lim.try_acquire("a", 0) > 0
    assert lim.try_acquire("b", 0) == 0
    assert lim.statistics()["limited"] == 1


def test_the_client_table_stays_bounded_evicting_idle_clients_first() -> None:
    lim = ClientLimiter(RateLimit(1000.0, 1), max_clients=16)
    now = 10**9
    for i in range(16):
        lim.try_acquire(i, now)
    assert len(lim) == 16
    lim.try_acquire("busy", now)  # every other client is active (empty bucket): oldest go
    assert len(lim) <= 16
    assert lim.statistics()["evicted_active"] >= 1
    now += 10 * MS  # all buckets full again: idle
    for i in range(100, 200):
        lim.try_acquire(i, now)
        assert len(lim) <= 16
    assert lim.statistics()["evicted_idle"] > 0


def test_evicting_an_idle_client_changes_nothing() -> None:
    rate = RateLimit(1000.0, 2)
    lim = ClientLimiter(rate, max_clients=1)
    ref = TokenBucket(rate)  # client a, never evicted
    now = 10**9
    assert lim.try_acquire("a", now) == ref.try_acquire(now) == 0
    now += 5 * MS  # a's bucket is full again: idle
    assert lim.try_acquire("b", now) == 0  # evicts a
    assert lim.statistics()["evicted_idle"] == 1
    assert lim.statistics()["evicted_active"] == 0
    assert [lim.try_acquire("a", now) for _ in range(3)] == [ref.try_acquire(now) for _ in range(3)]


@given(
    clients=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 500_000)), max_size=150),
)
def test_a_client_limiter_decides_like_one_bucket_per_client(clients: list[tuple[int, int]]) -> None:
    rate = RateLimit(2000.0, 3)
    lim = ClientLimiter(rate)
    buckets = {c: TokenBucket(rate) for c in range(4)}
    now = 10**9
    for c, gap in clients:
        now += gap
        assert lim.try_acquire(c, now) == buckets[c].try_acquire(now)
