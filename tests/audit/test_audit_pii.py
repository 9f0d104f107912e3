"""PII: keys of entities marked ``pii`` are hashed under per-subject keys (or dropped) before
they are written; erasing a subject's key unlinks its records while the chain verifies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from auditkit import KEY, records
from independent_verifier import pii_token, subject_file
from toyservice import CTX, feed

from tailguard import Service, load_service
from tailguard.audit.log import AuditLog
from tailguard.audit.pii import PiiPolicy, SubjectKeys
from tailguard.audit.problems import AuditError, Code
from tailguard.audit.replay import replay
from tailguard.audit.verify import segments, verify
from tailguard.errors import SpecError
from tailguard.spec import EntitySpec, load_spec
from tailguard.testing import FakeClock


def pii_service(toy_copy: Path, clock: FakeClock, mode: str = "hash") -> Service:
    spec = toy_copy / "service.toml"
    marked = f'key_dtype = "str"\npii = true\npii_mode = "{mode}"'
    spec.write_text(spec.read_text().replace('key_dtype = "str"', marked))
    return load_service(toy_copy, clock=clock, freeze_gc=False)


def logged(svc: Service, directory: Path, subjects: SubjectKeys | None) -> AuditLog:
    log = AuditLog.for_service(svc, directory, KEY, subject_keys=subjects)
    svc.attach(log)
    return log


def test_keys_are_replaced_by_tokens_before_they_are_written(
    toy_copy: Path, clock: FakeClock, tmp_path: Path
) -> None:
    svc = pii_service(toy_copy, clock)
    subjects = SubjectKeys(tmp_path / "subjects")
    log = logged(svc, tmp_path / "a", subjects)
    svc.engine.predict("alice@example.com", CTX)
    svc.engine.predict("alice@example.com", CTX)
    svc.engine.predict_batch(["bob@example.com", "alice@example.com"], CTX)
    log.close()
    one, two, batch = records(log.directory)
    assert one.keys == two.keys == batch.keys[1] and one.keys.startswith("pii1:")
    assert b"example.com" not in b"".join(p.read_bytes() for p in segments(log.directory))
    path = subject_file(tmp_path / "subjects", "item", "alice@example.com")
    assert one.keys == pii_token(path.read_bytes(), "item", "alice@example.com")
    assert verify(log.directory, KEY, "toy").ok


def test_drop_mode_logs_no_key_at_all(toy_copy: Path, clock: FakeClock, tmp_path: Path) -> None:
    svc = pii_service(toy_copy, clock, "drop")
    log = logged(svc, tmp_path / "a", None)
    svc.engine.predict("alice", CTX)
    svc.engine.predict_batch(["a", "b"], CTX)
    log.close()
    assert [r.keys for r in records(log.directory)] == [None, [None, None]]


def test_hashing_without_a_subject_key_directory_is_refused(
    toy_copy: Path, clock: FakeClock, tmp_path: Path
) -> None:
    svc = pii_service(toy_copy, clock)
    with pytest.raises(AuditError) as info:
        AuditLog.for_service(svc, tmp_path / "a", KEY)
    assert info.value.code == Code.PII_KEYS_MISSING


def test_subject_keys_are_private_files(tmp_path: Path) -> None:
    subjects = SubjectKeys(tmp_path / "s")
    subjects.token("user", "alice")
    path = subjects.path("user", "alice")
    assert path.stat().st_mode & 0o777 == 0o600 and (tmp_path / "s").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "s" / "index.key").stat().st_mode & 0o777 == 0o600
    assert "alice" not in str(path)


def test_erasure_unlinks_a_subject_and_the_chain_still_verifies(
    toy_copy: Path, clock: FakeClock, tmp_path: Path
) -> None:
    svc = pii_service(toy_copy, clock)
    subjects = SubjectKeys(tmp_path / "subjects")
    log = logged(svc, tmp_path / "a", subjects)
    feed(svc, "alice")
    svc.engine.predict("alice", CTX)
    log.drain()
    before = records(log.directory)[0].keys
    assert SubjectKeys(tmp_path / "subjects").erase("item", "alice")  # another process
    assert subjects.lookup("item", "alice") is None
    svc.engine.predict("alice", CTX)  # the running writer notices the erasure
    log.close()
    first, second = records(log.directory)
    assert first.keys == before and second.keys != before  # a new pseudonym after erasure
    assert verify(log.directory, KEY, "toy").ok
    assert replay(log.directory, KEY, svc).ok  # replay uses features, not keys


def test_erasing_an_unknown_subject_is_an_error(tmp_path: Path) -> None:
    assert not SubjectKeys(tmp_path / "s").erase("item", "nobody")
    run = subprocess.run([sys.executable, "-m", "tailguard", "audit", "erase", "nobody", "--entity", "item",
                          "--subject-keys", str(tmp_path / "s")], capture_output=True, text=True)
    assert run.returncode == 2 and "[audit_unknown_subject]" in run.stderr


def test_erase_on_the_command_line(tmp_path: Path) -> None:
    subjects = SubjectKeys(tmp_path / "s")
    subjects.token("user", 42)
    run = subprocess.run([sys.executable, "-m", "tailguard", "audit", "erase", "42", "--int",
                          "--entity", "user",
                          "--subject-keys", str(tmp_path / "s")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert subjects.lookup("user", 42) is None
    assert (tmp_path / "s" / "erased.log").read_text().count("\n") == 1


def test_the_policy_rewrites_every_key_shape() -> None:
    class Tokens(SubjectKeys):
        def __init__(self) -> None:
            """No directory: tokens are the key, tagged."""

        def token(self, entity: str, key: object) -> str:
            return f"t:{entity}:{key}"

    entities = [EntitySpec(name="user", pii=True), EntitySpec(name="item")]
    policy = PiiPolicy(entities, ["user", "item"], Tokens())
    assert policy.apply({"user": "u1", "item": "i1"}) == {"user": "t:user:u1", "item": "i1"}
    hashed = policy.apply({"user": ["u1", "u2"], "item": "i"})
    assert hashed == {"user": ["t:user:u1", "t:user:u2"], "item": "i"}
    single = PiiPolicy([EntitySpec(name="user", pii=True)], ["user"], Tokens())
    assert single.apply("u1") == "t:user:u1" and single.apply(["a"]) == ["t:user:a"]


def test_the_spec_accepts_pii_marks_and_refuses_unknown_modes(toy_copy: Path) -> None:
    spec = toy_copy / "service.toml"
    text = spec.read_text()
    spec.write_text(text.replace('key_dtype = "str"', 'key_dtype = "str"\npii = true\npii_mode = "drop"'))
    (entity,) = load_spec(toy_copy).entities
    assert (entity.pii, entity.pii_mode) == (True, "drop")
    spec.write_text(text.replace('key_dtype = "str"', 'key_dtype = "str"\npii = true\npii_mode = "mask"'))
    with pytest.raises(SpecError) as info:
        load_spec(toy_copy)
    assert info.value.path == "$.entities[0].pii_mode"
