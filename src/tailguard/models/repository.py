"""The model repository: ``<root>/<name>/<version>/`` directories, version policy, loading.

Loading is where every model error surfaces — missing or corrupt files, a signature that
does not match the artifact, or pinned feature versions that differ from the live ones —
so the first request never meets one.  The repository's ``registry.toml`` may require every
version to be signed (``tailguard.registry.sign``); an unsigned or badly signed version is
refused here with ``ModelSignatureError`` (a ``ModelLoadError``).  A loaded model is warmed
up (a declared number of inferences) before it can take traffic, which also seeds its
service-time estimate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tailguard.clock import Clock, MonotonicClock
from tailguard.errors import FeatureVersionMismatch, ModelLoadError, ModelNotFound
from tailguard.models.manifest import Manifest, read_manifest
from tailguard.models.onnx import OnnxRuntime
from tailguard.models.runtime import Runtime, ServiceTime
from tailguard.models.trees import TreesRuntime
from tailguard.registry.sign import SignatureStatus, check_version_signature, load_policy
from tailguard.spec import ModelSpec

__all__ = ["LoadedModel", "list_versions", "load_model", "resolve_version"]


@dataclass(eq=False)
class LoadedModel:
    """A model version ready to serve: manifest, runtime and its learned service time."""

    name: str
    version: str
    manifest: Manifest
    runtime: Runtime
    service_time: ServiceTime = field(default_factory=ServiceTime)
    #: What the signature check found at load (unsigned when no policy asked for one).
    signature: SignatureStatus = field(default_factory=lambda: SignatureStatus(False, False))

    @property
    def label(self) -> str:
        """``name/version``: how decisions name the model that answered."""
        return f"{self.name}/{self.version}"


def _version_key(v: str) -> tuple[int, int | str]:
    return (0, int(v)) if v.isdigit() else (1, v)


def list_versions(root: Path, name: str) -> list[str]:
    """Versions present for ``name`` (directories holding a manifest), oldest first."""
    d = root / name
    if not d.is_dir():
        return []
    # Names starting with "." are versions being written (see models.export): never served.
    return sorted(
        (p.name for p in d.iterdir() if not p.name.startswith(".") and (p / "manifest.json").is_file()),
        key=_version_key,
    )


def resolve_version(spec: ModelSpec, root: Path) -> str:
    """The version the policy selects: the newest, or the pinned one."""
    versions = list_versions(root, spec.name)
    if spec.version_policy == "pinned":
        assert spec.version is not None
        if spec.version not in versions:
            raise ModelNotFound(
                f"model {spec.name!r}: pinned version {spec.version!r} not in {root / spec.name}"
            )
        return spec.version
    if not versions:
        raise ModelNotFound(f"model {spec.name!r}: no version under {root / spec.name}")
    return versions[-1]


def check_feature_versions(m: Manifest, live: Mapping[str, str]) -> None:
    """Refuse a model whose pinned view versions differ from the live ones (names the view)."""
    for view, pinned in sorted(m.feature_versions.items()):
        current = live.get(view, "<not served>")
        if current != pinned:
            raise FeatureVersionMismatch(f"{m.name}/{m.version}", view, pinned, current)
    for col in m.inputs:
        view = col.split(".", 1)[0]
        if view not in m.feature_versions:
            raise ModelLoadError(
                f"model {m.name}/{m.version}: input {col!r} reads view {view!r}, "
                "whose version the manifest does not pin"
            )


def _runtime(spec: ModelSpec, directory: Path, m: Manifest) -> Runtime:
    trees = m.artifact("trees")
    onnx = m.artifact("onnx")
    want = spec.runtime
    if want == "trees" or (want == "auto" and trees is not None):
        if trees is None:
            raise ModelLoadError(f"{directory}: runtime 'trees' asked but no trees artifact")
        try:
            return TreesRuntime(directory / trees.path)
        except ModelLoadError:
            if want == "trees" or onnx is None:
                raise
    if onnx is None:
        raise ModelLoadError(f"{directory}: no ONNX artifact")
    return OnnxRuntime(
        directory / onnx.path,
        input_name=onnx.input_name,
        output_name=onnx.output_name,
        output_columns=onnx.output_columns,
        intra_op_threads=spec.intra_op_threads,
    )


def load_model(
    spec: ModelSpec,
    service_dir: Path,
    live_feature_versions: Mapping[str, str],
    *,
    version: str | None = None,
    clock: Clock | None = None,
) -> LoadedModel:
    """Load, verify (hashes, then the signature policy of ``<repository>/registry.toml``),
    check against live feature versions and warm up one model version."""
    root = (service_dir / spec.repository).resolve()
    ver = version or resolve_version(spec, root)
    directory = root / spec.name / ver
    m = read_manifest(directory)
    if (m.name, m.version) != (spec.name, ver):
        raise ModelLoadError(
            f"{directory}: manifest says {m.name}/{m.version}, the repository path says {spec.name}/{ver}"
        )
    signature = check_version_signature(directory, load_policy(root))
    check_feature_versions(m, live_feature_versions)
    rt = _runtime(spec, directory, m)
    if rt.n_inputs != len(m.inputs):
        raise ModelLoadError(
            f"{directory}: manifest declares {len(m.inputs)} inputs, the model takes {rt.n_inputs}"
        )
    if rt.n_outputs != len(m.outputs):
        raise ModelLoadError(
            f"{directory}: manifest declares {len(m.outputs)} outputs, the model gives {rt.n_outputs}"
        )
    loaded = LoadedModel(name=spec.name, version=ver, manifest=m, runtime=rt, signature=signature)
    warm_up(loaded, spec.warmup, clock=clock)
    return loaded


def warm_up(
    model: LoadedModel,
    n: int,
    batch_sizes: tuple[int, ...] = (1, 64),
    *,
    clock: Clock | None = None,
) -> None:
    """Run ``n`` inferences per batch size on zeros; seeds the service-time estimate."""
    now = (clock or MonotonicClock()).now_ns
    rt = model.runtime
    for b in batch_sizes:
        x = np.zeros((b, rt.n_inputs), dtype=np.float32)
        for _ in range(n):
            t0 = now()
            out = rt.run(x)
            model.service_time.observe(b, now() - t0)
        if n and not np.all(np.isfinite(out)):
            raise ModelLoadError(f"model {model.label}: non-finite outputs on warm-up input")
