"""The near-cache without I/O: fill race, clears, CLOCK eviction, link state and staleness."""

from __future__ import annotations

import numpy as np
import pytest

from tailguard.features.online.nearcache import NearCache, Value
from tailguard.testing import FakeClock

F = b"view@v1"


def entry(x: float, written: int = 0) -> dict[bytes, Value]:
    return {F: (np.array([x], dtype=np.float32), written)}


def test_a_fill_started_before_an_invalidation_of_its_key_is_refused() -> None:
    c = NearCache(10, FakeClock())
    epoch = c.epoch  # read before the fetch is sent
    c.invalidate([b"k1"])  # a write lands while the fetch is in flight
    assert c.fill({b"k1": entry(1.0), b"k2": entry(2.0)}, 0, epoch) == 1
    assert b"k1" not in c and b"k2" in c
    assert c.fills_refused == 1


def test_a_fill_after_the_invalidation_is_stored() -> None:
    c = NearCache(10, FakeClock())
    c.invalidate([b"k1"])
    assert c.fill({b"k1": entry(1.0)}, 0, c.epoch) == 1 and b"k1" in c


def test_a_clear_refuses_every_fill_in_flight() -> None:
    c = NearCache(10, FakeClock())
    epoch = c.epoch
    c.clear()
    assert c.fill({b"k1": entry(1.0)}, 0, epoch) == 0 and len(c) == 0


def test_an_overflowing_invalidation_log_refuses_the_fill() -> None:
    c = NearCache(10, FakeClock(), log_size=2)
    epoch = c.epoch
    c.invalidate([b"a", b"b", b"c"])  # more than the log remembers: k1 may have been among them
    assert c.fill({b"k1": entry(1.0)}, 0, epoch) == 0


def test_clock_eviction_keeps_referenced_entries() -> None:
    c = NearCache(2, FakeClock())
    c.fill({b"a": entry(1.0), b"b": entry(2.0)}, 0, c.epoch)
    assert c.get(b"a") is not None  # a referenced: gets a second chance
    c.fill({b"c": entry(3.0)}, 0, c.epoch)
    assert len(c) == 2 and b"a" in c and b"c" in c and b"b" not in c
    assert c.evictions == 1


def test_a_merge_keeps_the_older_fill_time_unless_it_replaces_every_view() -> None:
    c = NearCache(10, FakeClock())
    c.fill({b"k": entry(1.0)}, 100, c.epoch)
    # Adds a view: the merged entry is as old as its oldest part.
    c.fill({b"k": {b"other@v1": (None, -1)}}, 500, c.epoch)
    e = c.get(b"k")
    assert e is not None and e.filled_ns == 100 and set(e.values) == {F, b"other@v1"}
    c.fill({b"k": {**entry(2.0), b"other@v1": (None, -1)}}, 900, c.epoch)  # every view fetched again
    e = c.get(b"k")
    assert e is not None and e.filled_ns == 900


def test_link_state_decides_what_is_proven() -> None:
    clock = FakeClock()
    c = NearCache(10, clock, link_timeout_s=1.0)
    now = clock.now_ns()
    assert not c.proven(now)  # never connected
    c.fill({b"k": entry(1.0)}, now, c.epoch)
    c.link_connected()
    assert len(c) == 0  # invalidations may have been missed before the link: nothing kept
    assert c.proven(clock.now_ns())
    clock.advance(1.5)
    assert not c.proven(clock.now_ns())  # not heard within the link timeout
    c.link_heard()
    assert c.proven(clock.now_ns())
    heard = clock.now_ns()
    c.link_lost()
    clock.advance(3.0)
    assert not c.proven(clock.now_ns())
    assert c.staleness_ns(heard - 10**9, clock.now_ns()) == 3 * 10**9  # fresh as of the last hearing
    assert c.staleness_ns(heard + 10**9, clock.now_ns()) == 2 * 10**9  # fresh as of its own fetch


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        NearCache(0, FakeClock())
