"""Retention: whole old segments go behind an authenticated anchor and the rest still
verifies and replays; a segment deleted without the anchor, a forged or rolled-back anchor
are found."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from auditkit import KEY, decide

from tailguard import Service
from tailguard.audit.format import ANCHOR_NAME, segment_name
from tailguard.audit.keys import Signer
from tailguard.audit.log import AuditLog
from tailguard.audit.problems import AuditError, AuditInvalid, Code
from tailguard.audit.replay import replay
from tailguard.audit.retention import Retention, retain
from tailguard.audit.verify import segments, verify
from tailguard.testing import FakeClock

DAY_S = 86_400.0


def segmented(service: Service, directory: Path, n_segments: int, clock: FakeClock | None = None,
              **options: object) -> AuditLog:
    """A log of ``n_segments`` closed segments of 5 records each (a day apart with ``clock``)."""
    wall = {} if clock is None else {"wall_clock": clock.wall_ns}
    log = None
    for _ in range(n_segments):
        log = AuditLog(directory, KEY, service.spec.name, service.engine, **wall, **options)  # type: ignore[arg-type]
        service.engine.set_hooks([log])
        decide(service, 5)
        log.close()
        if clock is not None:
            clock.advance(DAY_S)
    assert log is not None
    return log


def code_of(directory: Path, **kw: object) -> Code | None:
    r = verify(directory, KEY, **kw)  # type: ignore[arg-type]
    return None if r.problem is None else r.problem.code


def test_keep_segments_removes_the_oldest_and_the_rest_verifies(service: Service, tmp_path: Path) -> None:
    segmented(service, tmp_path / "a", 5)
    out = retain(tmp_path / "a", KEY, Retention(keep_segments=2))
    assert out.removed == [segment_name(i) for i in range(3)] and out.first_segment == 3
    assert (out.first_seq, out.removed_records) == (15, 15)
    r = verify(tmp_path / "a", KEY, "toy")
    assert (r.ok, r.segments, r.first_segment, r.records, r.warnings) == (True, 2, 3, 10, [])
    assert replay(tmp_path / "a", KEY, service).equal == 10


def test_keep_days_removes_only_segments_closed_before_the_cutoff(
    service: Service, clock: FakeClock, tmp_path: Path
) -> None:
    segmented(service, tmp_path / "a", 4, clock)  # closed at days 0, 1, 2, 3; now is day 4
    out = retain(tmp_path / "a", KEY, Retention(keep_days=2.5), now_wall_ns=clock.wall_ns())
    assert out.removed == [segment_name(0), segment_name(1)]
    assert verify(tmp_path / "a", KEY).ok


def test_the_newest_segment_is_never_removed(service: Service, tmp_path: Path) -> None:
    segmented(service, tmp_path / "a", 2)
    out = retain(tmp_path / "a", KEY, Retention(keep_days=0.0, keep_segments=0))
    assert out.removed == [segment_name(0)] and verify(tmp_path / "a", KEY).ok


def test_cuts_accumulate_in_the_anchor(service: Service, tmp_path: Path) -> None:
    log = segmented(service, tmp_path / "a", 3)
    retain(tmp_path / "a", KEY, Retention(keep_segments=2))
    segmented(service, log.directory, 2)
    out = retain(tmp_path / "a", KEY, Retention(keep_segments=1))
    assert (out.first_segment, out.removed_records) == (4, 20)
    assert verify(tmp_path / "a", KEY).as_dict()["removed_records"] == 20


def test_a_segment_deleted_without_an_anchor_is_found(service: Service, tmp_path: Path) -> None:
    segmented(service, tmp_path / "a", 3)
    (tmp_path / "a" / segment_name(0)).unlink()
    assert code_of(tmp_path / "a") is Code.ANCHOR_MISSING


def test_a_segment_deleted_after_the_anchor_is_found(service: Service, tmp_path: Path) -> None:
    segmented(service, tmp_path / "a", 4)
    retain(tmp_path / "a", KEY, Retention(keep_segments=3))
    (tmp_path / "a" / segment_name(1)).unlink()
    assert code_of(tmp_path / "a") is Code.SEQUENCE


@pytest.mark.parametrize("damage", ["flip", "truncate", "append"])
def test_a_forged_or_damaged_anchor_is_found(service: Service, tmp_path: Path, damage: str) -> None:
    segmented(service, tmp_path / "a", 3)
    retain(tmp_path / "a", KEY, Retention(keep_segments=1))
    anchor = tmp_path / "a" / ANCHOR_NAME
    data = bytearray(anchor.read_bytes())
    if damage == "flip":
        data[10] ^= 0x01
    elif damage == "truncate":
        del data[-3:]
    else:
        data += b"\x00"
    anchor.write_bytes(bytes(data))
    assert code_of(tmp_path / "a") is Code.ANCHOR_INVALID


def test_an_anchor_rolled_back_to_an_earlier_cut_is_found(service: Service, tmp_path: Path) -> None:
    segmented(service, tmp_path / "a", 4)
    retain(tmp_path / "a", KEY, Retention(keep_segments=3))
    earlier = (tmp_path / "a" / ANCHOR_NAME).read_bytes()
    retain(tmp_path / "a", KEY, Retention(keep_segments=2))
    (tmp_path / "a" / ANCHOR_NAME).write_bytes(earlier)  # hides that segment 1 was removed
    assert code_of(tmp_path / "a") is Code.SEQUENCE


def test_an_interrupted_cut_leaves_a_log_that_verifies_and_is_finished(
    service: Service, tmp_path: Path
) -> None:
    segmented(service, tmp_path / "a", 3)
    kept = tmp_path / "seg0"
    shutil.copy(tmp_path / "a" / segment_name(0), kept)
    retain(tmp_path / "a", KEY, Retention(keep_segments=2))
    shutil.copy(kept, tmp_path / "a" / segment_name(0))  # as if the crash came before the unlink
    r = verify(tmp_path / "a", KEY)
    assert r.ok and r.first_segment == 1 and any("precedes the retention anchor" in w for w in r.warnings)
    assert retain(tmp_path / "a", KEY, Retention(keep_segments=2)).removed == [segment_name(0)]
    assert verify(tmp_path / "a", KEY).warnings == []


def test_a_log_that_does_not_verify_is_not_cut(service: Service, tmp_path: Path) -> None:
    segmented(service, tmp_path / "a", 3)
    with pytest.raises(AuditInvalid) as info:
        retain(tmp_path / "a", bytes(32), Retention(keep_segments=1))
    assert info.value.code == Code.WRONG_KEY and len(segments(tmp_path / "a")) == 3


def test_a_signed_log_needs_its_signing_key_and_gets_a_signed_anchor(
    service: Service, tmp_path: Path
) -> None:
    signer = Signer.generate()
    segmented(service, tmp_path / "a", 3, signer=signer)
    with pytest.raises(AuditError) as info:
        retain(tmp_path / "a", KEY, Retention(keep_segments=1))
    assert info.value.code == Code.UNSIGNED
    retain(tmp_path / "a", KEY, Retention(keep_segments=1), signer=signer)
    assert verify(tmp_path / "a", None, public_keys=[signer.public]).ok
    other = verify(tmp_path / "a", None, public_keys=[Signer.generate().public])
    assert other.problem is not None and other.problem.code is Code.WRONG_PUBLIC_KEY


def test_the_writer_applies_its_retention_after_each_rotation(service: Service, tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a", KEY, service.spec.name, service.engine, segment_bytes=2000,
                   retention=Retention(keep_segments=2))
    service.engine.set_hooks([log])
    for _ in range(8):
        decide(service, 10)
        log.drain()
    log.close()
    r = verify(tmp_path / "a", KEY)
    assert r.ok and r.segments == 2 and r.first_segment > 0
    assert r.records + r.as_dict()["removed_records"] == 80


def test_retain_on_the_command_line(service: Service, tmp_path: Path) -> None:
    segmented(service, tmp_path / "a", 3)
    (tmp_path / "key").write_bytes(KEY)
    run = subprocess.run([sys.executable, "-m", "tailguard", "audit", "retain", str(tmp_path / "a"),
                          "--key-file", str(tmp_path / "key"), "--keep-segments", "1", "--json"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["removed"] == [segment_name(0), segment_name(1)]
