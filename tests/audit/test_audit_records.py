"""What a version 2 record holds (feature ages, model content hash), periodic checkpoints, and
reading version 1 logs."""

from __future__ import annotations

import struct
from pathlib import Path

import msgspec
import numpy as np
from auditkit import KEY, decide, decoded, records
from toyservice import CTX, feed

from tailguard import Service
from tailguard.audit.format import LEN, NO_AGE, Checkpoint, DecisionRecord, Header, mac, segment_name
from tailguard.audit.log import AuditLog
from tailguard.audit.replay import replay
from tailguard.audit.verify import verify
from tailguard.testing import FakeClock

MS = 1_000_000


def open_log(service: Service, directory: Path, **options: object) -> AuditLog:
    log = AuditLog(directory, KEY, service.spec.name, service.engine, **options)  # type: ignore[arg-type]
    service.engine.set_hooks([log])
    return log


def ages(rec: DecisionRecord) -> list[int]:
    return list(struct.unpack(f"<{len(rec.ages_ns) // 8}q", rec.ages_ns))


def test_each_record_holds_the_age_of_every_stored_view(
    service: Service, clock: FakeClock, tmp_path: Path
) -> None:
    log = open_log(service, tmp_path / "a")
    feed(service, "a")  # written now
    clock.advance(ns=7 * MS)
    service.engine.predict("a", CTX)
    service.engine.predict("never-seen", CTX)
    log.close()
    known, unknown = records(log.directory)
    assert ages(known) == [7 * MS] and ages(unknown) == [NO_AGE]
    assert decoded(log.directory / segment_name(0))[0].views == ["stats"]


def test_a_batch_records_one_age_per_row_and_view(service: Service, clock: FakeClock, tmp_path: Path) -> None:
    log = open_log(service, tmp_path / "a")
    feed(service, "a")
    clock.advance(ns=3 * MS)
    feed(service, "b")
    clock.advance(ns=2 * MS)
    service.engine.predict_batch(["a", "zz", "b"], CTX)
    log.close()
    (rec,) = records(log.directory)
    assert ages(rec) == [5 * MS, NO_AGE, 2 * MS]


def test_a_stale_row_keeps_its_real_age(service: Service, clock: FakeClock, tmp_path: Path) -> None:
    log = open_log(service, tmp_path / "a")
    feed(service, "a")
    clock.advance(11.0)  # past the 10 s TTL: defaults served, flagged stale
    d = service.engine.predict("a", CTX)
    log.close()
    (rec,) = records(log.directory)
    assert ages(rec) == [11_000 * MS] and rec.flags == [d.flags] and d.flags & 2


def test_the_model_content_hash_is_recorded(service: Service, tmp_path: Path) -> None:
    log = open_log(service, tmp_path / "a")
    decide(service, 2)
    log.close()
    recs = records(log.directory)
    assert {r.model_hash for r in recs} == {service.models["primary"].manifest.content_hash}
    assert recs[0].model_version == service.models["primary"].label


def test_checkpoints_come_every_n_records(service: Service, tmp_path: Path) -> None:
    log = open_log(service, tmp_path / "a", checkpoint_records=4)
    decide(service, 10)
    log.close()
    cks = [e for e in decoded(log.directory / segment_name(0)) if type(e) is Checkpoint]
    assert [c.seq for c in cks] == [4, 8, 10] and [c.closing for c in cks] == [False, False, True]
    r = verify(log.directory, KEY)
    assert r.ok and r.checkpoints == 3


def test_a_checkpoint_comes_after_its_interval_when_records_were_written(
    service: Service, clock: FakeClock, tmp_path: Path
) -> None:
    log = open_log(service, tmp_path / "a", checkpoint_interval_s=1.0)
    decide(service, 3)
    log.drain()
    assert log.checkpoints == 0
    clock.advance(1.5)
    log.drain()  # the queue is empty, but 3 records wait for a checkpoint
    assert log.checkpoints == 1
    clock.advance(1.5)
    log.drain()  # no record since the last checkpoint
    assert log.checkpoints == 1


def test_the_writer_encodes_numpy_keys(service: Service, tmp_path: Path) -> None:
    log = open_log(service, tmp_path / "a")
    service.engine.predict_batch(np.array(["a", "b"]), CTX)
    log.close()
    assert records(log.directory)[0].keys == ["a", "b"]


def write_v1(directory: Path, recs: list[DecisionRecord]) -> None:
    """A version 1 log (header and checkpoint without the version 2 fields) of ``recs``."""
    enc = msgspec.msgpack.Encoder()
    directory.mkdir()
    prev, out = bytes(16), bytearray()
    items: list[object] = [[0, "tailguard-audit", 1, "toy", 0, 1, 0]]
    items += [[1, *msgspec.structs.astuple(r)[:14]] for r in recs]
    items.append([3, len(recs), 2, len(items), True])
    for item in items:
        payload = enc.encode(item)
        prev = mac(KEY, prev, payload)
        out += LEN.pack(len(payload)) + payload + prev
    (directory / segment_name(0)).write_bytes(bytes(out))


def test_a_version_1_log_verifies_replays_and_is_continued(service: Service, tmp_path: Path) -> None:
    log = open_log(service, tmp_path / "v2")
    decide(service, 5)
    log.close()
    write_v1(tmp_path / "v1", records(log.directory))
    first = decoded(tmp_path / "v1" / segment_name(0))
    assert type(first[0]) is Header and first[0].version == 1 and first[1].model_hash == ""
    assert verify(tmp_path / "v1", KEY, "toy").ok
    assert replay(tmp_path / "v1", KEY, service).equal == 5
    again = open_log(service, tmp_path / "v1")
    decide(service, 2)
    again.close()
    r = verify(tmp_path / "v1", KEY, "toy")
    assert (r.ok, r.records, r.segments) == (True, 7, 2)
    assert decoded(tmp_path / "v1" / segment_name(1))[0].version == 2
