"""docs/audit.md is precise enough to write a verifier: ``independent_verifier`` (written from
the document, importing nothing from tailguard) agrees with ``tailguard audit verify`` on good
logs — plain, multi-segment, signed, after a retention cut — and on every kind of tampering."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import independent_verifier as iv
import pytest
from auditkit import KEY, decide, rewrite

from tailguard import Service
from tailguard.audit.keys import Signer
from tailguard.audit.log import AuditLog
from tailguard.audit.retention import Retention, retain
from tailguard.audit.verify import read_entries, segments, verify

SIGNER = Signer.generate()


def make_log(service: Service, directory: Path, n_segments: int = 3, signer: Signer | None = None) -> Path:
    """``n_segments`` closed segments of 6 decisions, checkpoints every 4 records."""
    for _ in range(n_segments):
        log = AuditLog(directory, KEY, service.spec.name, service.engine,  # type: ignore[arg-type]
                       signer=signer, checkpoint_records=4)
        service.engine.set_hooks([log])
        decide(service, 6)
        log.close()
    return directory


def both(directory: Path, key: bytes | None = KEY, public: bool = False) -> tuple[bool, bool, int, int]:
    """(tailguard ok, independent ok, tailguard records, independent records)."""
    pks = [SIGNER.public] if public else []
    ours = verify(directory, key, "toy", public_keys=pks)
    theirs = iv.verify(directory, key, pks)
    return ours.ok, theirs.ok, ours.records, theirs.records


@pytest.mark.parametrize("signed", [False, True])
def test_both_accept_a_good_log_and_count_the_same_records(service: Service, tmp_path: Path,
                                                           signed: bool) -> None:
    d = make_log(service, tmp_path / "a", signer=SIGNER if signed else None)
    assert both(d, public=signed) == (True, True, 18, 18)
    if signed:  # a holder of the public key alone checks every checkpoint
        assert both(d, key=None, public=True) == (True, True, 18, 18)
        assert iv.verify(d, None, [SIGNER.public]).signed == verify(d, None, "toy",
                                                                     public_keys=[SIGNER.public]).signed_checkpoints


def test_both_accept_a_log_after_a_retention_cut(service: Service, tmp_path: Path) -> None:
    d = make_log(service, tmp_path / "a", n_segments=4, signer=SIGNER)
    retain(d, KEY, Retention(keep_segments=2), signer=SIGNER)
    assert both(d, public=True) == (True, True, 12, 12)
    assert iv.verify(d, KEY).first_segment == 2


def _entries(path: Path) -> list[tuple[bytes, bytes]]:
    return [(payload, tag) for _, _, payload, tag in read_entries(path)]


def _flip(d: Path) -> None:
    path = segments(d)[1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _delete(d: Path) -> None:
    path = segments(d)[0]
    parts = _entries(path)
    rewrite(path, parts[:3] + parts[4:])


def _swap(d: Path) -> None:
    path = segments(d)[0]
    parts = _entries(path)
    parts[2], parts[3] = parts[3], parts[2]
    rewrite(path, parts)


def _insert(d: Path) -> None:
    path = segments(d)[0]
    parts = _entries(path)
    rewrite(path, [*parts[:3], parts[2], *parts[3:]])


def _truncate(d: Path) -> None:
    path = segments(d)[0]
    path.write_bytes(path.read_bytes()[:-40])


def _drop_segment(d: Path) -> None:
    segments(d)[1].unlink()


def _zero_mac(d: Path) -> None:
    path = segments(d)[2]
    parts = _entries(path)
    rewrite(path, [(p, bytes(16)) if i == 1 else (p, t) for i, (p, t) in enumerate(parts)])


TAMPERS: dict[str, Callable[[Path], None]] = {
    "modified": _flip, "deleted": _delete, "reordered": _swap, "inserted": _insert,
    "truncated": _truncate, "segment missing": _drop_segment, "bad mac": _zero_mac,
}


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_both_refuse_every_kind_of_tampering(service: Service, tmp_path: Path, tamper: str) -> None:
    good = make_log(service, tmp_path / "good")
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    TAMPERS[tamper](bad)
    ours, theirs, _, _ = both(bad)
    assert (ours, theirs) == (False, False)


def test_both_refuse_a_wrong_key_and_a_wrong_public_key(service: Service, tmp_path: Path) -> None:
    d = make_log(service, tmp_path / "a", signer=SIGNER)
    wrong = bytes(reversed(KEY))
    assert (verify(d, wrong, "toy").ok, iv.verify(d, wrong).ok) == (False, False)
    stranger = Signer.generate().public
    ours = verify(d, None, "toy", public_keys=[stranger])
    assert (ours.ok, iv.verify(d, None, [stranger]).ok) == (False, False)
