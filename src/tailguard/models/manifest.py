"""Model manifests: what a model version is, what it reads, and proof its files are intact.

A model version lives in ``<repository>/<name>/<version>/`` with ``manifest.json`` and its
artifacts.
The manifest records the input signature (qualified feature columns, ``view.field``, in the
model's input order), the outputs, the feature view versions the model was trained on, and
each artifact's SHA-256.  ``content_hash`` covers what decides the model's answers — the
signature, the pinned feature versions and the artifacts' hashes — not its name, version
label or training notes, so a version is addressed by what it computes; ``read_manifest``
recomputes every hash at load and refuses a mismatch.

Registry metadata rides along without entering ``content_hash``: ``training_data`` (where the
training rows came from, their SHA-256, row count and time range) and ``metrics`` (offline
metrics such as ``auc``).  Manifests written before these fields existed still load.  A
detached signature (``manifest.sig``, see ``tailguard.registry.sign``) covers
``canonical_bytes`` — every field of the file, ``content_hash`` included.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import msgspec

from tailguard.errors import ModelLoadError

__all__ = ["Artifact", "Manifest", "TrainingData", "canonical_bytes", "content_hash", "file_sha256",
           "read_manifest", "write_manifest"]

MANIFEST = "manifest.json"


class Artifact(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One file of a model version: how to run it and its SHA-256."""

    kind: Literal["onnx", "trees"]
    path: str
    sha256: str
    #: ONNX: the input tensor to feed and the output tensor to read.
    input_name: str = ""
    output_name: str = ""
    #: Columns of the output tensor that are the model's outputs (e.g. [1]: P(class 1)).
    output_columns: tuple[int, ...] = ()


class TrainingData(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where a version's training rows came from: a path or URI, and what is known about them
    (SHA-256 of the data file, row count, event-time range as ISO 8601 strings)."""

    uri: str
    sha256: str = ""
    rows: int | None = None
    start: str = ""
    end: str = ""


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A model version's manifest (``manifest.json``)."""

    name: str
    version: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    feature_versions: dict[str, str]
    artifacts: tuple[Artifact, ...]
    content_hash: str = ""
    created_at: str = ""
    training: dict[str, Any] = {}
    #: The training set this version was fitted on (None: not recorded).
    training_data: TrainingData | None = None
    #: Offline metrics measured at training time, e.g. ``{"auc": 0.75, "logloss": 0.61}``.
    metrics: dict[str, float] = {}

    def artifact(self, kind: str) -> Artifact | None:
        """The artifact of ``kind`` (``onnx`` or ``trees``), or None."""
        for a in self.artifacts:
            if a.kind == kind:
                return a
        return None


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_hash(m: Manifest) -> str:
    """SHA-256 over the signature, pinned feature versions and artifact hashes."""
    body = {
        "inputs": list(m.inputs),
        "outputs": list(m.outputs),
        "feature_versions": dict(sorted(m.feature_versions.items())),
        "artifacts": sorted([a.kind, a.sha256, a.input_name, a.output_name, list(a.output_columns)]
                            for a in m.artifacts),
    }
    return hashlib.sha256(msgspec.json.encode(body)).hexdigest()


def canonical_bytes(raw: bytes) -> bytes:
    """The canonical form of a manifest file's bytes: its JSON with keys sorted and no
    whitespace — what a signature covers, so re-formatting the file keeps it valid while any
    change of a value (``content_hash`` included) breaks it."""
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ModelLoadError(f"corrupt manifest: {exc}") from exc
    return msgspec.json.encode(data, order="sorted")


def write_manifest(directory: Path, m: Manifest) -> Manifest:
    """Hash the artifacts in ``directory``, fill ``content_hash`` and write ``manifest.json``."""
    arts = tuple(
        msgspec.structs.replace(a, sha256=file_sha256(directory / a.path)) for a in m.artifacts
    )
    m = msgspec.structs.replace(m, artifacts=arts)
    m = msgspec.structs.replace(m, content_hash=content_hash(m))
    (directory / MANIFEST).write_bytes(msgspec.json.format(msgspec.json.encode(m)))
    return m


def read_manifest(directory: Path, *, verify: bool = True) -> Manifest:
    """Read and (by default) verify a version's manifest and artifact hashes."""
    path = directory / MANIFEST
    try:
        m = msgspec.json.decode(path.read_bytes(), type=Manifest)
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{directory}: no {MANIFEST}") from exc
    except msgspec.DecodeError as exc:
        raise ModelLoadError(f"{path}: corrupt manifest: {exc}") from exc
    if not m.inputs or not m.outputs or not m.artifacts:
        raise ModelLoadError(f"{path}: a manifest needs inputs, outputs and artifacts")
    if verify:
        for a in m.artifacts:
            f = directory / a.path
            if not f.is_file():
                raise ModelLoadError(f"{directory}: artifact {a.path!r} is missing")
            if file_sha256(f) != a.sha256:
                raise ModelLoadError(f"{directory}: artifact {a.path!r} is corrupt (hash mismatch)")
        if content_hash(m) != m.content_hash:
            raise ModelLoadError(f"{path}: content hash mismatch (manifest edited?)")
    return m
