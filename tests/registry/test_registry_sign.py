"""Signed manifests: round trips, tampering and wrong keys refused, the policy enforced at load."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from registrykit import add_version, write_policy
from toyservice import live_versions

from tailguard.audit.keys import new_key
from tailguard.errors import ModelLoadError
from tailguard.models.manifest import canonical_bytes, content_hash, read_manifest
from tailguard.models.repository import load_model
from tailguard.registry.problems import ModelSignatureError
from tailguard.registry.sign import (
    SIGNATURE,
    Policy,
    check_version_signature,
    load_policy,
    load_signing_key,
    read_signature,
    sign_version,
)
from tailguard.spec import ModelSpec

PRIMARY = ModelSpec(name="primary", repository="models", warmup=1)


@pytest.fixture
def svc(toy_copy: Path, primary_v2: Path) -> Path:
    add_version(toy_copy, primary_v2)
    return toy_copy


def v2(svc: Path) -> Path:
    return svc / "models" / "primary" / "2"


def test_ed25519_signature_round_trips(svc: Path, ed_key: tuple[Path, Path]) -> None:
    key, pub = ed_key
    sig = sign_version(v2(svc), load_signing_key(key))
    write_policy(svc, require=True, public=pub)
    st = check_version_signature(v2(svc), load_policy(svc / "models"))
    assert (st.signed, st.verified, st.key_id, st.algorithm) == (True, True, sig.key_id, "ed25519")
    assert read_signature(v2(svc)) == sig


def test_hmac_signature_round_trips(svc: Path, mac_key: Path) -> None:
    sign_version(v2(svc), load_signing_key(mac_key))
    write_policy(svc, require=True, mac=mac_key)
    st = check_version_signature(v2(svc), load_policy(svc / "models"))
    assert (st.verified, st.algorithm) == (True, "hmac-sha256")


def test_signature_survives_reformatting_the_manifest(svc: Path, ed_key: tuple[Path, Path]) -> None:
    key, pub = ed_key
    sign_version(v2(svc), load_signing_key(key))
    path = v2(svc) / "manifest.json"
    path.write_bytes(msgspec.json.encode(msgspec.json.decode(path.read_bytes())))  # compact form
    write_policy(svc, require=True, public=pub)
    assert check_version_signature(v2(svc), load_policy(svc / "models")).verified


def test_edited_metrics_break_the_signature(svc: Path, ed_key: tuple[Path, Path]) -> None:
    key, pub = ed_key
    sign_version(v2(svc), load_signing_key(key))
    path = v2(svc) / "manifest.json"
    data = msgspec.json.decode(path.read_bytes())
    data["metrics"]["auc"] = 0.99  # not covered by content_hash, covered by the signature
    path.write_bytes(msgspec.json.encode(data))
    assert content_hash(read_manifest(v2(svc))) == data["content_hash"]
    write_policy(svc, require=False, public=pub)
    with pytest.raises(ModelSignatureError, match="bad signature"):
        check_version_signature(v2(svc), load_policy(svc / "models"))


def test_tampered_artifact_is_refused_before_the_signature(svc: Path, ed_key: tuple[Path, Path]) -> None:
    key, pub = ed_key
    sign_version(v2(svc), load_signing_key(key))
    so = v2(svc) / "model.so"
    data = bytearray(so.read_bytes())
    data[len(data) // 2] ^= 0xFF
    so.write_bytes(bytes(data))
    write_policy(svc, require=True, public=pub)
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_model(PRIMARY, svc, live_versions(svc), version="2")


def test_a_corrupt_version_is_not_signed(svc: Path, mac_key: Path) -> None:
    (v2(svc) / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="corrupt"):
        sign_version(v2(svc), load_signing_key(mac_key))
    assert not (v2(svc) / SIGNATURE).exists()


def test_wrong_key_is_refused_when_signatures_are_required(
    svc: Path, ed_key: tuple[Path, Path], tmp_path: Path
) -> None:
    key, _ = ed_key
    sign_version(v2(svc), load_signing_key(key))
    other = tmp_path / "other.key"
    new_key(other)
    write_policy(svc, require=True, mac=other)
    with pytest.raises(ModelSignatureError, match="does not list"):
        load_model(PRIMARY, svc, live_versions(svc), version="2")


def test_forged_signature_with_a_listed_key_id_is_refused(svc: Path, mac_key: Path, tmp_path: Path) -> None:
    sig = sign_version(v2(svc), load_signing_key(mac_key))
    forged = msgspec.structs.replace(sig, signature="00" * 32)
    (v2(svc) / SIGNATURE).write_bytes(msgspec.json.encode(forged))
    write_policy(svc, require=True, mac=mac_key)
    with pytest.raises(ModelSignatureError, match="bad signature") as err:
        load_model(PRIMARY, svc, live_versions(svc), version="2")
    assert err.value.code == "model_signature_invalid"


def test_unsigned_version_is_refused_when_required(svc: Path, mac_key: Path) -> None:
    write_policy(svc, require=True, mac=mac_key)
    with pytest.raises(ModelSignatureError, match="unsigned"):
        load_model(PRIMARY, svc, live_versions(svc), version="2")


def test_unsigned_version_loads_without_a_policy(svc: Path) -> None:
    m = load_model(PRIMARY, svc, live_versions(svc), version="2")
    assert (m.version, m.signature.signed) == ("2", False)


def test_unknown_key_counts_as_unsigned_when_not_required(svc: Path, mac_key: Path, tmp_path: Path) -> None:
    sign_version(v2(svc), load_signing_key(mac_key))
    other = tmp_path / "other.key"
    new_key(other)
    write_policy(svc, require=False, mac=other)
    m = load_model(PRIMARY, svc, live_versions(svc), version="2")
    assert (m.signature.signed, m.signature.verified) == (True, False)


def test_signed_version_loads_under_the_policy(svc: Path, ed_key: tuple[Path, Path]) -> None:
    key, pub = ed_key
    sign_version(v2(svc), load_signing_key(key))
    write_policy(svc, require=True, public=pub)
    m = load_model(PRIMARY, svc, live_versions(svc), version="2")
    assert m.signature.verified


def test_policy_requiring_signatures_without_keys_is_refused(svc: Path) -> None:
    write_policy(svc, require=True)
    with pytest.raises(ModelLoadError, match="no public_keys"):
        load_policy(svc / "models")


def test_no_policy_file_requires_nothing(tmp_path: Path) -> None:
    assert load_policy(tmp_path) == Policy()


def test_not_a_key_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "short.key"
    bad.write_bytes(b"tiny")
    with pytest.raises(ModelSignatureError, match="16 to 64 bytes"):
        load_signing_key(bad)


def test_manifest_without_registry_fields_still_loads(toy_copy: Path) -> None:
    d = toy_copy / "models" / "primary" / "1"
    path = d / "manifest.json"
    data = msgspec.json.decode(path.read_bytes())
    data.pop("metrics", None)
    data.pop("training_data", None)
    path.write_bytes(msgspec.json.encode(data))
    m = read_manifest(d)
    assert (m.metrics, m.training_data) == ({}, None)


def test_training_data_and_metrics_round_trip(primary_v2: Path) -> None:
    m = read_manifest(primary_v2)
    assert m.metrics == {"auc": 0.71, "logloss": 0.62}
    assert m.training_data is not None and m.training_data.rows == 600


def test_canonical_bytes_ignore_layout_not_values() -> None:
    assert canonical_bytes(b'{"b": 1, "a": 2}') == canonical_bytes(b'{"a":2,"b":1}')
    assert canonical_bytes(b'{"a": 2}') != canonical_bytes(b'{"a": 3}')


def test_policy_key_paths_are_relative_to_the_repository(svc: Path, ed_key: tuple[Path, Path]) -> None:
    key, pub = ed_key
    (svc / "models" / "keys").mkdir()
    (svc / "models" / "keys" / "release.pub").write_bytes(pub.read_bytes())
    policy = 'require_signature = true\npublic_keys = ["keys/release.pub"]\n'
    (svc / "models" / "registry.toml").write_text(policy)
    sign_version(v2(svc), load_signing_key(key))
    assert load_model(PRIMARY, svc, live_versions(svc), version="2").signature.verified


def test_policy_with_an_unknown_field_is_refused(svc: Path) -> None:
    (svc / "models" / "registry.toml").write_text("require_signatures = true\n")
    with pytest.raises(ModelLoadError, match="invalid registry policy"):
        load_policy(svc / "models")
