"""Ed25519-signed checkpoints: a holder of the public key alone checks them; a MAC-key holder
cannot rewrite history past a signed checkpoint; wrong keys and stripped or forged
signatures are named by code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from auditkit import KEY, all_entries, decide, decoded, rechain
from toyservice import CTX

from tailguard import Service
from tailguard.audit.format import LEN, Checkpoint, DecisionRecord, segment_name
from tailguard.audit.keys import Signer, load_public_key, load_signer
from tailguard.audit.log import AuditLog
from tailguard.audit.problems import AuditError, Code
from tailguard.audit.verify import read_entries, verify


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer.generate()


def signed_log(service: Service, directory: Path, signer: Signer, n: int = 10, **options: object) -> AuditLog:
    log = AuditLog(directory, KEY, service.spec.name, service.engine, signer=signer,  # type: ignore[arg-type]
                   checkpoint_records=4, **options)
    service.engine.set_hooks([log])
    decide(service, n)
    log.close()
    return log


def tailguard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tailguard", *args], capture_output=True, text=True)


def test_keygen_writes_a_private_pem_0600_and_a_public_pem(tmp_path: Path) -> None:
    out = tailguard("audit", "keygen", "--ed25519", str(tmp_path / "sign.pem"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "sign.pem").stat().st_mode & 0o777 == 0o600
    pub = load_public_key(tmp_path / "sign.pem.pub")
    assert load_signer(tmp_path / "sign.pem").public == pub and len(pub) == 32


def test_the_public_key_alone_checks_every_checkpoint(
    service: Service, tmp_path: Path, signer: Signer
) -> None:
    log = signed_log(service, tmp_path / "a", signer)
    r = verify(log.directory, None, "toy", public_keys=[signer.public])
    assert (r.ok, r.signed_checkpoints, r.records, r.warnings) == (True, 3, 10, [])
    both = verify(log.directory, KEY, "toy", public_keys=[signer.public])
    assert both.ok and both.signed_checkpoints == 3


def test_the_mac_key_alone_verifies_and_says_signatures_were_not_checked(
    service: Service, tmp_path: Path, signer: Signer
) -> None:
    log = signed_log(service, tmp_path / "a", signer)
    r = verify(log.directory, KEY)
    assert r.ok and any("not checked" in w for w in r.warnings)


def test_a_wrong_public_key_is_named(service: Service, tmp_path: Path, signer: Signer) -> None:
    log = signed_log(service, tmp_path / "a", signer)
    r = verify(log.directory, None, public_keys=[Signer.generate().public])
    assert not r.ok and r.problem is not None and r.problem.code is Code.WRONG_PUBLIC_KEY


def test_without_the_mac_key_a_modified_record_fails_its_checkpoint_digest(
    service: Service, tmp_path: Path, signer: Signer
) -> None:
    log = signed_log(service, tmp_path / "a", signer)
    path = log.directory / segment_name(0)
    _, offset, payload, _ = list(read_entries(path))[2]
    data = bytearray(path.read_bytes())
    data[offset + LEN.size + len(payload) - 1] ^= 0x01  # inside the record's ages: still decodes
    path.write_bytes(bytes(data))
    r = verify(log.directory, None, public_keys=[signer.public])
    assert not r.ok and r.problem is not None and r.problem.code is Code.CHECKPOINT


def test_a_mac_key_holder_rewriting_history_is_caught_by_the_signatures(
    service: Service, tmp_path: Path, signer: Signer
) -> None:
    log = signed_log(service, tmp_path / "a", signer)
    entries = all_entries(log.directory)
    rec = entries[segment_name(0)][1]
    assert type(rec) is DecisionRecord
    rec.priority = "critical"  # a forged past, re-chained with the MAC key
    rechain(log.directory, entries)
    assert verify(log.directory, KEY).ok  # the MAC chain alone cannot tell
    r = verify(log.directory, KEY, public_keys=[signer.public])
    assert not r.ok and r.problem is not None and r.problem.code is Code.BAD_SIGNATURE


def test_a_stripped_signature_is_found_even_without_the_public_key(
    service: Service, tmp_path: Path, signer: Signer
) -> None:
    log = signed_log(service, tmp_path / "a", signer)
    entries = all_entries(log.directory)
    ck = next(e for e in entries[segment_name(0)] if type(e) is Checkpoint)
    ck.signer, ck.signature = b"", b""
    rechain(log.directory, entries)
    r = verify(log.directory, KEY)
    assert not r.ok and r.problem is not None and r.problem.code is Code.UNSIGNED


def test_an_unsigned_log_fails_when_a_public_key_is_given(service: Service, tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a", KEY, service.spec.name, service.engine)
    log.close()
    r = verify(log.directory, KEY, public_keys=[Signer.generate().public])
    assert not r.ok and r.problem is not None and r.problem.code is Code.UNSIGNED


def test_a_rotated_signing_key_needs_both_public_keys(
    service: Service, tmp_path: Path, signer: Signer
) -> None:
    signed_log(service, tmp_path / "a", signer)
    newer = Signer.generate()
    signed_log(service, tmp_path / "a", newer)  # a restart with a new signing key
    assert verify(tmp_path / "a", KEY, public_keys=[signer.public, newer.public]).ok
    r = verify(tmp_path / "a", KEY, public_keys=[signer.public])
    assert not r.ok and r.problem is not None and r.problem.code is Code.WRONG_PUBLIC_KEY


def test_an_interrupted_signed_segment_needs_a_signer_to_be_closed(
    service: Service, tmp_path: Path, signer: Signer
) -> None:
    log = AuditLog(tmp_path / "a", KEY, service.spec.name, service.engine, signer=signer)
    service.engine.set_hooks([log])
    service.engine.predict("a", CTX)
    log.drain()  # the process dies here
    with pytest.raises(AuditError, match="signing key"):
        AuditLog(tmp_path / "a", KEY, service.spec.name, service.engine)
    again = AuditLog(tmp_path / "a", KEY, service.spec.name, service.engine, signer=signer)
    again.close()
    r = verify(tmp_path / "a", None, public_keys=[signer.public])
    assert (r.ok, r.segments, r.records) == (True, 2, 1)
    assert decoded(tmp_path / "a" / segment_name(0))[-1].closing


def test_signing_without_cryptography_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.asymmetric", None)
    with pytest.raises(AuditError, match=r"tailguard\[signing\]") as info:
        Signer.generate()
    assert info.value.code == Code.SIGNING_UNAVAILABLE


def test_verify_takes_public_keys_on_the_command_line(service: Service, tmp_path: Path) -> None:
    assert tailguard("audit", "keygen", "--ed25519", str(tmp_path / "s.pem")).returncode == 0
    log = signed_log(service, tmp_path / "a", load_signer(tmp_path / "s.pem"))
    ok = tailguard("audit", "verify", str(log.directory), "--public-key", str(tmp_path / "s.pem.pub"))
    assert ok.returncode == 0 and "signed_checkpoints: 3" in ok.stdout
    Signer.generate()
    other = tmp_path / "other.pub"
    other.write_bytes(Signer.generate().public)
    bad = tailguard("audit", "verify", str(log.directory), "--public-key", str(other), "--json")
    assert bad.returncode == 1 and '"code": "audit_wrong_public_key"' in bad.stdout
