"""The decision tap: one reply-path copy of each decision, read by several side tasks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from toyservice import CTX, feed

from tailguard import Service
from tailguard.features.store import NEVER
from tailguard.observe.tap import DECISION, FILLED, ROWS, DecisionTap, decided_ns, singles
from tailguard.testing import FakeClock

KEYS = [f"k{i}" for i in range(5)]


def test_a_decision_is_kept_with_its_feature_row_write_times_and_times(service: Service,
                                                                        clock: FakeClock) -> None:
    feed(service, "a")
    tap = DecisionTap(service.engine, 8, wall_clock=lambda: 1_700_000_000_000_000_000)
    service.engine.set_hooks([tap])
    clock.advance(2.0)
    d = service.engine.predict("a", CTX)
    i = 0
    assert tap.slots[i][DECISION] is d and tap.slots[i][ROWS] == 0
    assert np.array_equal(tap.row_features(i)[0], service.engine.last_features(1)[0])
    assert np.array_equal(tap.row_written(i)[0], service.engine.last_written_ns(1)[0])
    assert tap.row_written(i)[0, 0] != NEVER  # "a" was written by feed()
    assert tap.slots[i][FILLED] == service.engine.assembler.filled_ns
    # No clock is read for the entry: the decision's end follows from the fill time and the
    # stage timings, its wall-clock time from the tap's offset between the two clocks.
    assert decided_ns(tap.slots[i]) == clock.now_ns()
    assert decided_ns(tap.slots[i]) + tap.wall_offset() == 1_700_000_000_000_000_000


def test_the_decision_time_is_the_engines_end_of_the_call(toy_dir: Path) -> None:
    from tailguard.service import load_service

    svc = load_service(toy_dir)  # the real clock: every stage takes time
    tap = DecisionTap(svc.engine, 8)
    svc.engine.set_hooks([tap])
    before = svc.engine.clock.now_ns()
    d = svc.engine.predict("a", CTX)
    bd = svc.engine.predict_batch(KEYS, CTX)
    after = svc.engine.clock.now_ns()
    for e, dec in ((tap.slots[0], d), (tap.slots[1], bd)):
        t = dec.timings_ns
        assert all(t[1:4])
        # t0 = fill time - ingest; the decision's end t4 = t0 + total
        assert decided_ns(e) == e[FILLED] - t[0] + t[4]
    assert before < decided_ns(tap.slots[0]) < decided_ns(tap.slots[1]) <= after
    svc.close()


def test_a_batch_keeps_copies_of_all_its_rows(service: Service) -> None:
    tap = DecisionTap(service.engine, 8)
    service.engine.set_hooks([tap])
    bd = service.engine.predict_batch(KEYS, CTX)
    rows = service.engine.last_features(len(KEYS)).copy()
    service.engine.predict("zz", CTX)  # overwrites the engine's buffer
    assert tap.slots[0][ROWS] == len(KEYS) and tap.slots[0][DECISION] is bd
    assert np.array_equal(tap.row_features(0), rows)
    assert tap.row_written(0).shape == (len(KEYS), tap.n_views)
    assert not singles(tap.entries(0, 2)) and singles(tap.entries(1, 1))


def test_each_reader_takes_every_decision_once_and_the_slowest_holds_entries(service: Service) -> None:
    tap = DecisionTap(service.engine, 4)
    service.engine.set_hooks([tap])
    fast, slow = tap.reader(), tap.reader()
    for k in KEYS[:4]:
        service.engine.predict(k, CTX)
    assert (fast.pending(), slow.pending(), tap.backlog()) == (4, 4, 4)
    fast.advance(tap.head)
    assert (fast.pending(), tap.backlog()) == (0, 4)
    assert all(e is not None for e in tap.slots)  # the slow reader still needs them
    service.engine.predict("k9", CTX)  # full for the slow reader: not kept
    assert (tap.dropped, tap.head, slow.missed(), fast.missed()) == (1, 4, 1, 1)
    assert slow.missed() == 0  # reported once
    slow.advance(tap.head)
    assert tap.slots == [None] * 4  # every reader passed them: freed
    service.engine.predict("k8", CTX)
    assert tap.head == 5 and fast.pending() == slow.pending() == 1


def test_a_removed_reader_no_longer_holds_the_tap_back(service: Service) -> None:
    tap = DecisionTap(service.engine, 2)
    service.engine.set_hooks([tap])
    gone, kept = tap.reader(), tap.reader()
    for k in KEYS[:2]:
        service.engine.predict(k, CTX)
    kept.advance(tap.head)
    tap.remove(gone)
    service.engine.predict("k3", CTX)
    assert (tap.dropped, kept.pending()) == (0, 1)


def test_attached_tasks_share_one_tap_hook_and_the_backlog_counts_it(service: Service, tmp_path) -> None:
    from tailguard.audit.log import AuditLog

    hooks = len(service.engine.hooks)
    a = AuditLog.for_service(service, tmp_path / "a", bytes(32))
    b = AuditLog.for_service(service, tmp_path / "b", bytes(32))
    service.attach(a)
    service.attach(b)
    # One hook: the tap (the latency recorder, a hook before, now reads it as well).
    assert hooks == 1 and service.engine.hooks == (service.decision_tap(),)
    for k in KEYS:
        service.engine.predict(k, CTX)
    assert service.side_backlog() == len(KEYS) and (a.pending, b.pending) == (5, 5)
    a.drain()
    assert service.side_backlog() == len(KEYS)  # b has not taken them yet
    b.drain()
    assert service.side_backlog() == 0 and (a.written, b.written) == (5, 5)


def test_rows_after_a_failed_oversized_batch_are_the_engines_new_buffers(service: Service) -> None:
    import pytest

    from tailguard.errors import ValidationError

    tap = DecisionTap(service.engine, 8)
    service.engine.set_hooks([tap])
    big = [f"k{i}" for i in range(service.engine.last_features(1).base.shape[0] + 1)]
    with pytest.raises(ValidationError):  # the buffers grow, then the context is refused
        service.engine.predict_batch(big, {"price": [1.0, 2.0], "size": 3.0})
    service.engine.predict("k1", CTX)
    assert np.array_equal(tap.row_features(0)[0], service.engine.last_features(1)[0])


def test_the_latency_recorder_moves_onto_the_tap_and_counts_every_decision(service: Service,
                                                                           tmp_path) -> None:
    from tailguard.audit.log import AuditLog

    assert service.latency is not None
    for k in KEYS[:3]:
        service.engine.predict(k, CTX)  # through the recorder's own hook
    service.attach(AuditLog.for_service(service, tmp_path / "a", bytes(32)))
    assert service.latency not in service.engine.hooks
    for k in KEYS:
        service.engine.predict(k, CTX)
    service.engine.predict_batch(KEYS, CTX)
    assert service.latency.pending() == 3 + 6
    snap = service.latency_snapshot()
    assert snap["predict"]["total"]["count"] == 8.0 and snap["predict_batch"]["total"]["count"] == 1.0
    assert service.latency.pending() == 0
