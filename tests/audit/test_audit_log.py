"""The audit log: every decision recorded off the reply path, MAC-chained; verification names
the first bad position for any modification, deletion, reordering, insertion or truncation;
a crashed writer's log still verifies and is continued."""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from toyservice import CTX

from tailguard import Service
from tailguard.audit.format import LEN, MAC_BYTES, DecisionRecord, segment_name
from tailguard.audit.log import AuditError, AuditLog, load_key, new_key
from tailguard.audit.verify import read_entries, verify

KEY = bytes(range(32))


@pytest.fixture
def log(service: Service, tmp_path: Path) -> Iterator[AuditLog]:
    a = AuditLog(tmp_path / "audit", KEY, service.spec.name, service.engine)
    service.engine.set_hooks([*service.engine.hooks, a])
    yield a


def decide(service: Service, n: int) -> None:
    for i in range(n):
        service.engine.predict(f"k{i}", CTX)


def records(path: Path) -> list[DecisionRecord]:
    dec = msgspec.msgpack.Decoder(DecisionRecord)
    out = []
    for _, _, payload, _ in read_entries(path):
        try:
            out.append(dec.decode(payload))
        except msgspec.ValidationError:
            continue  # header / checkpoint
    return out


def entries(path: Path) -> list[tuple[int, int, bytes, bytes]]:
    return list(read_entries(path))


def rewrite(path: Path, parts: list[tuple[bytes, bytes]]) -> None:
    path.write_bytes(b"".join(LEN.pack(len(p)) + p + m for p, m in parts))


def test_every_decision_is_recorded_with_its_features_and_outputs(service: Service, log: AuditLog) -> None:
    decide(service, 5)
    service.engine.predict_batch(["a", "b"], CTX)
    log.close()
    recs = records(log.directory / segment_name(0))
    assert [r.seq for r in recs] == list(range(6)) and recs[0].keys == "k0"
    d = service.engine.predict("k0", CTX)  # same inputs, same answer
    assert np.frombuffer(recs[0].outputs, dtype=np.float64).tolist() == d.outputs.tolist()
    feats = np.frombuffer(recs[0].features, dtype=np.float32)
    assert feats.size == recs[0].width == service.engine.assembler.width
    batch_feats = np.frombuffer(recs[5].features, dtype=np.float32)
    assert recs[5].rungs == [0, 0] and len(batch_feats) == 2 * recs[5].width


def test_the_reply_path_only_queues(service: Service, log: AuditLog) -> None:
    decide(service, 3)
    assert log.pending == 3 and log.written == 0
    assert log.drain() == 3 and log.pending == 0


def test_a_clean_log_verifies(service: Service, log: AuditLog) -> None:
    decide(service, 20)
    log.close()
    r = verify(log.directory, KEY, service.spec.name)
    assert (r.ok, r.records, r.warnings) == (True, 20, [])


def test_a_wrong_key_fails_at_the_first_entry(service: Service, log: AuditLog) -> None:
    decide(service, 2)
    log.close()
    r = verify(log.directory, bytes(32))
    assert not r.ok and r.problem is not None and (r.problem.entry, r.problem.offset) == (0, 0)


def test_a_log_of_another_service_is_refused(service: Service, log: AuditLog) -> None:
    log.close()
    r = verify(log.directory, KEY, "other")
    assert not r.ok and r.problem is not None and "service" in r.problem.reason


@pytest.mark.parametrize("victim", [1, 5, 10])
def test_a_modified_byte_is_found_at_its_entry(service: Service, log: AuditLog, victim: int) -> None:
    decide(service, 10)
    log.close()
    path = log.directory / segment_name(0)
    offset = entries(path)[victim][1]
    data = bytearray(path.read_bytes())
    data[offset + LEN.size + 3] ^= 0x01
    path.write_bytes(bytes(data))
    r = verify(log.directory, KEY)
    assert not r.ok and r.problem is not None and (r.problem.entry, r.problem.offset) == (victim, offset)


def test_a_deleted_entry_is_found(service: Service, log: AuditLog) -> None:
    decide(service, 10)
    log.close()
    path = log.directory / segment_name(0)
    parts = [(p, m) for _, _, p, m in entries(path)]
    rewrite(path, parts[:4] + parts[5:])
    r = verify(log.directory, KEY)
    assert not r.ok and r.problem is not None and r.problem.entry == 4


def test_swapped_entries_are_found(service: Service, log: AuditLog) -> None:
    decide(service, 10)
    log.close()
    path = log.directory / segment_name(0)
    parts = [(p, m) for _, _, p, m in entries(path)]
    parts[3], parts[4] = parts[4], parts[3]
    rewrite(path, parts)
    r = verify(log.directory, KEY)
    assert not r.ok and r.problem is not None and r.problem.entry == 3


def test_an_inserted_entry_is_found(service: Service, log: AuditLog) -> None:
    decide(service, 10)
    log.close()
    path = log.directory / segment_name(0)
    parts = [(p, m) for _, _, p, m in entries(path)]
    rewrite(path, [*parts[:6], parts[2], *parts[6:]])
    r = verify(log.directory, KEY)
    assert not r.ok and r.problem is not None and r.problem.entry == 6


def test_a_truncated_closed_segment_is_found(service: Service, log: AuditLog) -> None:
    decide(service, 10)
    log.close()
    AuditLog(log.directory, KEY, service.spec.name, service.engine).close()  # a second segment
    path = log.directory / segment_name(0)
    path.write_bytes(path.read_bytes()[:-10])
    r = verify(log.directory, KEY)
    assert not r.ok and r.problem is not None and r.problem.segment == path.name


def test_a_missing_segment_is_found(service: Service, log: AuditLog) -> None:
    log.close()
    for _ in range(2):
        AuditLog(log.directory, KEY, service.spec.name, service.engine).close()
    os.remove(log.directory / segment_name(1))
    os.rename(log.directory / segment_name(2), log.directory / segment_name(1))
    r = verify(log.directory, KEY)
    assert not r.ok and r.problem is not None and r.problem.segment == segment_name(1)


def test_a_crashed_writer_leaves_a_verifiable_log_that_is_continued(service: Service, log: AuditLog) -> None:
    decide(service, 10)
    log.drain()  # written and fsynced, never closed: the process died here
    path = log.directory / segment_name(0)
    with path.open("ab") as f:
        f.write(struct.pack(">I", 500) + b"torn")  # half an entry
    before = verify(log.directory, KEY)
    assert before.ok and before.records == 10 and before.warnings
    again = AuditLog(log.directory, KEY, service.spec.name, service.engine)
    service.engine.set_hooks([again])
    decide(service, 5)
    again.close()
    after = verify(log.directory, KEY)
    assert (after.ok, after.records, after.segments, after.warnings) == (True, 15, 2, [])


def test_a_log_that_does_not_verify_is_not_continued(service: Service, log: AuditLog) -> None:
    decide(service, 3)
    log.close()
    with pytest.raises(AuditError):
        AuditLog(log.directory, bytes(32), service.spec.name, service.engine)


def test_a_full_buffer_drops_and_records_the_gap(service: Service, tmp_path: Path) -> None:
    small = AuditLog(tmp_path / "a", KEY, service.spec.name, service.engine, capacity=4)
    service.engine.set_hooks([small])
    decide(service, 10)
    small.close()
    r = verify(small.directory, KEY)
    assert (r.ok, r.records, r.dropped, small.dropped) == (True, 4, 6, 6)


def test_segments_rotate_at_their_size_limit(service: Service, tmp_path: Path) -> None:
    a = AuditLog(tmp_path / "a", KEY, service.spec.name, service.engine, segment_bytes=2000)
    service.engine.set_hooks([a])
    for _ in range(5):
        decide(service, 10)
        a.drain()
    a.close()
    r = verify(a.directory, KEY)
    assert r.ok and r.records == 50 and r.segments > 1


def test_keys_are_written_private_and_read_back(tmp_path: Path) -> None:
    k = new_key(tmp_path / "key")
    assert load_key(tmp_path / "key") == k and len(k) == 32
    assert (tmp_path / "key").stat().st_mode & 0o777 == 0o600
    (tmp_path / "short").write_bytes(b"x")
    with pytest.raises(AuditError):
        load_key(tmp_path / "short")


def test_mac_bytes_follow_every_payload(service: Service, log: AuditLog) -> None:
    decide(service, 1)
    log.close()
    path = log.directory / segment_name(0)
    total = sum(LEN.size + len(p) + MAC_BYTES for _, _, p, _ in entries(path))
    assert total == path.stat().st_size


# -- fsync off the serving thread, drain within its budget --------------------------------------
class FsyncSpy:
    """Records which thread each fsync ran on; fsyncs off the main thread wait for ``gate``."""

    def __init__(self, real: Any) -> None:
        self.real, self.threads = real, []  # type: list[str]
        self.gate, self.background = threading.Event(), threading.Event()
        self.gate.set()
        self.fail = False

    def __call__(self, fd: int) -> None:
        name = threading.current_thread().name
        self.threads.append(name)
        if name != threading.main_thread().name:
            self.gate.wait(10)
            self.background.set()
            if self.fail:
                raise OSError(5, "Input/output error")
        self.real(fd)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> FsyncSpy:
    s = FsyncSpy(os.fsync)
    monkeypatch.setattr(os, "fsync", s)
    return s


def wait_synced(log: AuditLog) -> None:
    state = log._synced
    for _ in range(1000):
        if state.done == state.asked:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the background fsync never finished")


def test_batched_fsync_runs_off_the_serving_thread(service: Service, log: AuditLog, spy: FsyncSpy) -> None:
    decide(service, 5)
    spy.threads.clear()
    assert log.drain() == 5
    assert spy.background.wait(10)
    assert spy.threads and all(t == "tailguard-audit-fsync" for t in spy.threads)
    wait_synced(log)
    assert verify(log.directory, KEY).records == 5  # written to the OS before the drain returned


def test_per_record_mode_fsyncs_on_the_calling_thread(service: Service, tmp_path: Path,
                                                      spy: FsyncSpy) -> None:
    a = AuditLog(tmp_path / "a", KEY, service.spec.name, service.engine, fsync_interval_s=0)
    service.engine.set_hooks([a])
    decide(service, 3)
    spy.threads.clear()
    a.drain()
    assert spy.threads == [threading.main_thread().name]
    a.close()


def test_rotation_while_a_background_fsync_waits_keeps_the_chain(service: Service, tmp_path: Path,
                                                                  spy: FsyncSpy) -> None:
    a = AuditLog(tmp_path / "a", KEY, service.spec.name, service.engine, segment_bytes=2000)
    service.engine.set_hooks([a])
    spy.gate.clear()  # the fsync thread is stuck on the first segment's descriptor
    for _ in range(5):
        decide(service, 10)
        a.drain()
    assert a._synced.asked == 1  # one in flight at a time: later drains did not queue more
    a.close()
    spy.gate.set()
    wait_synced(a)
    r = verify(a.directory, KEY)
    assert r.ok and r.records == 50 and r.segments > 1


def test_a_failed_background_fsync_is_raised_by_the_next_drain(service: Service, log: AuditLog,
                                                               spy: FsyncSpy) -> None:
    spy.fail = True
    decide(service, 2)
    log.drain()
    wait_synced(log)
    decide(service, 2)
    with pytest.raises(AuditError, match="fsync"):
        log.drain()


def test_drain_keeps_to_its_budget(service: Service, log: AuditLog) -> None:
    decide(service, 40)
    assert log.drain(0) == 1  # at least one record, then the clock is checked after each
    assert log.pending == 39
    assert log.drain() == 39
    log.close()
    assert verify(log.directory, KEY).records == 40


def test_a_backlog_is_worked_off_even_under_a_zero_budget(service: Service, log: AuditLog) -> None:
    decide(service, 640)
    assert log.drain(0) == 10  # a 64th of the backlog, whatever the budget
    assert log.drain(0) == 630 >> 6
    assert log.drain() == 640 - 10 - (630 >> 6)
    log.close()
    assert verify(log.directory, KEY).records == 640
