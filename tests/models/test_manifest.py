"""Manifests: round trip, a stable content hash, and verification of the files at read time."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import msgspec
import pytest

from tailguard.errors import ModelLoadError
from tailguard.models.manifest import Artifact, Manifest, content_hash, read_manifest, write_manifest


@pytest.fixture
def version_dir(toy_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the toy primary model's version directory."""
    return Path(shutil.copytree(toy_dir / "models" / "primary" / "1", tmp_path / "1"))


def manifest_json(directory: Path) -> dict:
    return msgspec.json.decode((directory / "manifest.json").read_bytes())


def write_json(directory: Path, data: dict) -> None:
    (directory / "manifest.json").write_bytes(msgspec.json.encode(data))


def flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_read_returns_what_write_wrote(version_dir: Path) -> None:
    m = read_manifest(version_dir)
    assert write_manifest(version_dir, m) == read_manifest(version_dir)


def test_content_hash_is_recomputable_from_the_manifest(version_dir: Path) -> None:
    m = read_manifest(version_dir)
    assert content_hash(m) == m.content_hash


def test_content_hash_is_stable_across_rewrites(version_dir: Path) -> None:
    before = read_manifest(version_dir).content_hash
    write_manifest(version_dir, read_manifest(version_dir))
    assert read_manifest(version_dir).content_hash == before


def test_content_hash_ignores_artifact_and_pin_order(version_dir: Path) -> None:
    m = read_manifest(version_dir)
    shuffled = msgspec.structs.replace(
        m,
        artifacts=m.artifacts[::-1],
        feature_versions=dict(reversed(list(m.feature_versions.items()))),
    )
    assert content_hash(shuffled) == content_hash(m)


def test_content_hash_ignores_descriptive_metadata(version_dir: Path) -> None:
    m = read_manifest(version_dir)
    relabelled = msgspec.structs.replace(m, created_at="1999-01-01T00:00:00+00:00", training={"note": "x"})
    assert content_hash(relabelled) == content_hash(m)


def test_content_hash_changes_when_an_artifact_changes(version_dir: Path) -> None:
    before = read_manifest(version_dir).content_hash
    flip_byte(version_dir / "model.onnx")
    assert write_manifest(version_dir, read_manifest(version_dir, verify=False)).content_hash != before


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda m: {"inputs": m.inputs[::-1]}, id="input-order"),
        pytest.param(lambda m: {"outputs": ("q",)}, id="outputs"),
        pytest.param(lambda m: {"feature_versions": {k: "0" * 16 for k in m.feature_versions}}, id="pins"),
    ],
)
def test_content_hash_changes_with_the_signature(version_dir: Path, change: object) -> None:
    m = read_manifest(version_dir)
    assert content_hash(msgspec.structs.replace(m, **change(m))) != m.content_hash  # type: ignore[operator]


def test_deleted_artifact_is_a_load_error(version_dir: Path) -> None:
    (version_dir / "model.so").unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        read_manifest(version_dir)


@pytest.mark.parametrize("artifact", ["model.onnx", "model.so"])
def test_flipped_byte_in_an_artifact_is_a_load_error(version_dir: Path, artifact: str) -> None:
    flip_byte(version_dir / artifact)
    with pytest.raises(ModelLoadError, match="corrupt"):
        read_manifest(version_dir)


def test_edited_manifest_is_a_load_error(version_dir: Path) -> None:
    data = manifest_json(version_dir)
    data["inputs"] = data["inputs"][::-1]
    write_json(version_dir, data)
    with pytest.raises(ModelLoadError, match="content hash"):
        read_manifest(version_dir)


def test_edited_artifact_hash_in_manifest_is_a_load_error(version_dir: Path) -> None:
    data = manifest_json(version_dir)
    data["artifacts"][0]["sha256"] = "0" * 64
    write_json(version_dir, data)
    with pytest.raises(ModelLoadError):
        read_manifest(version_dir)


def test_truncated_manifest_is_a_load_error(version_dir: Path) -> None:
    path = version_dir / "manifest.json"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ModelLoadError, match="corrupt manifest"):
        read_manifest(version_dir)


def test_manifest_with_unknown_fields_is_a_load_error(version_dir: Path) -> None:
    data = manifest_json(version_dir)
    data["surprise"] = 1
    write_json(version_dir, data)
    with pytest.raises(ModelLoadError):
        read_manifest(version_dir)


def test_missing_manifest_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no manifest\.json"):
        read_manifest(tmp_path)


def test_manifest_without_artifacts_is_a_load_error(tmp_path: Path) -> None:
    m = Manifest(
        name="m", version="1", inputs=("v.a",), outputs=("p",), feature_versions={"v": "x"}, artifacts=()
    )
    write_manifest(tmp_path, m)
    with pytest.raises(ModelLoadError, match="needs inputs, outputs and artifacts"):
        read_manifest(tmp_path)


def test_reading_without_verify_skips_the_file_checks(version_dir: Path) -> None:
    (version_dir / "model.so").unlink()
    assert read_manifest(version_dir, verify=False).name == "primary"


def test_write_manifest_hashes_each_artifact(tmp_path: Path) -> None:
    (tmp_path / "a.onnx").write_bytes(b"one")
    (tmp_path / "b.so").write_bytes(b"two")
    m = write_manifest(
        tmp_path,
        Manifest(
            name="m", version="1", inputs=("v.a",), outputs=("p",), feature_versions={"v": "x"},
            artifacts=(
                Artifact(kind="onnx", path="a.onnx", sha256=""),
                Artifact(kind="trees", path="b.so", sha256=""),
            ),
        ),
    )
    assert [a.sha256 for a in m.artifacts] == [hashlib.sha256(b).hexdigest() for b in (b"one", b"two")]
