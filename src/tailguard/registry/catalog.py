"""The catalog of a service directory's model repository: every model, every version, checked.

``catalog`` lists what is there cheaply (manifests read, artifacts not hashed): content hash,
creation time, signature, metrics and which version the spec's version policy selects.
``verify`` does everything ``load_model`` would refuse a version for, without building a
runtime: artifact and content hashes, the manifest's name and version against its path, the
signature policy (``registry.toml``) and the pinned feature view versions against the live
ones compiled from the service's views.  Each problem carries the stable error code.

Owner: any thread (reads files only).  Used by ``tailguard models`` and the rollout tooling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tailguard.errors import ModelLoadError, ModelNotFound, TailguardError
from tailguard.models.manifest import Manifest, read_manifest
from tailguard.models.repository import check_feature_versions, list_versions, resolve_version
from tailguard.registry.sign import Policy, Signature, check_version_signature, load_policy, read_signature
from tailguard.spec import ModelSpec, ServiceSpec, load_spec

__all__ = ["Problem", "VersionEntry", "catalog", "live_feature_versions", "verify"]


@dataclass(frozen=True)
class VersionEntry:
    """One version in the repository.  ``manifest`` is None when it cannot be read (``error``
    says why); ``selected`` marks the version the spec's version policy serves."""

    model: str
    version: str
    directory: Path
    manifest: Manifest | None
    signature: Signature | None
    selected: bool
    error: str = ""

    @property
    def label(self) -> str:
        """``model/version``."""
        return f"{self.model}/{self.version}"


@dataclass(frozen=True)
class Problem:
    """Why a version would be refused: the stable error code and the message."""

    code: str
    message: str


def _repository(root: Path, spec: ModelSpec) -> Path:
    return (root / spec.repository).resolve()


def _selected(spec: ModelSpec, repository: Path) -> str | None:
    try:
        return resolve_version(spec, repository)
    except ModelNotFound:
        return None


def catalog(service_dir: str | Path, model: str | None = None, *,
            spec: ServiceSpec | None = None) -> list[VersionEntry]:
    """Every version of every model the spec declares (or of ``model``), oldest first per
    model, in spec order.  Unreadable manifests and signature files become ``error``."""
    root = Path(service_dir).resolve()
    sspec = spec or load_spec(root)
    entries: list[VersionEntry] = []
    for ms in sspec.models:
        if model is not None and ms.name != model:
            continue
        repo = _repository(root, ms)
        chosen = _selected(ms, repo)
        for ver in list_versions(repo, ms.name):
            d = repo / ms.name / ver
            m: Manifest | None = None
            sig: Signature | None = None
            error = ""
            try:
                m = read_manifest(d, verify=False)
                sig = read_signature(d)
            except TailguardError as exc:
                error = str(exc)
            entries.append(VersionEntry(ms.name, ver, d, m, sig, ver == chosen, error))
    return entries


def live_feature_versions(service_dir: str | Path, spec: ServiceSpec | None = None) -> dict[str, str]:
    """The live version of every feature view the service declares (compiles its views,
    importing their transforms)."""
    from tailguard.features.view import compile_views

    root = Path(service_dir).resolve()
    sspec = spec or load_spec(root)
    return {n: v.version for n, v in compile_views(sspec.feature_views, str(root)).items()}


def verify(service_dir: str | Path, model: str | None = None, version: str | None = None,
           ) -> list[tuple[VersionEntry, list[Problem]]]:
    """Check every version (or one model, or one version) as ``load_model`` would; returns
    each version with its problems (empty: it would load).  Raises ``ModelNotFound`` when the
    named model or version does not exist."""
    root = Path(service_dir).resolve()
    sspec = load_spec(root)
    if model is not None and all(m.name != model for m in sspec.models):
        names = [m.name for m in sspec.models]
        raise ModelNotFound(f"the service declares no model {model!r}; models: {names}")
    entries = [e for e in catalog(root, model, spec=sspec) if version is None or e.version == version]
    if version is not None and not entries:
        raise ModelNotFound(f"model {model!r} has no version {version!r}")
    live = live_feature_versions(root, sspec)
    policies: dict[Path, Policy] = {}
    out: list[tuple[VersionEntry, list[Problem]]] = []
    for e in entries:
        problems: list[Problem] = []
        repo = e.directory.parent.parent
        try:
            m = read_manifest(e.directory)
            if (m.name, m.version) != (e.model, e.version):
                raise ModelLoadError(
                    f"manifest says {m.name}/{m.version}, the repository path says {e.label}")
        except TailguardError as exc:
            problems.append(Problem(exc.code, str(exc)))
            out.append((e, problems))
            continue
        try:
            if repo not in policies:
                policies[repo] = load_policy(repo)
            check_version_signature(e.directory, policies[repo])
        except TailguardError as exc:
            problems.append(Problem(exc.code, str(exc)))
        try:
            check_feature_versions(m, live)
        except TailguardError as exc:
            problems.append(Problem(exc.code, str(exc)))
        out.append((e, problems))
    return out
