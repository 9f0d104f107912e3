"""A candidate: one faster form of a model version, built in a scratch directory.

Every candidate carries the artifacts a new version would hold (files in its own scratch
directory, hashes filled when written) and a runtime built from exactly those files, so what
is measured is what would be written.  A candidate that cannot be built on this machine or
for this model (no converter installed, nothing to quantise, not a LightGBM booster) is kept
with ``skipped`` saying why, so the table shows every option that was considered.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tailguard.models.manifest import Artifact, Manifest
from tailguard.models.onnx import OnnxRuntime
from tailguard.models.runtime import Runtime
from tailguard.spec import ModelSpec

__all__ = ["BOOSTER_FILE", "Candidate", "Source", "onnx_candidate", "skipped"]

#: The LightGBM text model ``models.export.export_lightgbm`` keeps beside the artifacts.
BOOSTER_FILE = "model.txt"


@dataclass
class Source:
    """The version being optimised and where candidates are built (``work``, a scratch dir)."""

    spec: ModelSpec
    directory: Path
    manifest: Manifest
    work: Path

    @property
    def booster(self) -> Path | None:
        """The version's LightGBM text model, when it kept one."""
        p = self.directory / BOOSTER_FILE
        return p if p.is_file() else None

    @property
    def onnx(self) -> Artifact | None:
        """The version's ONNX artifact, if any."""
        return self.manifest.artifact("onnx")

    def scratch(self, name: str) -> Path:
        """A fresh, empty scratch directory for candidate ``name``."""
        d = self.work / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d


@dataclass
class Candidate:
    """One option: its name, what it does, its files (``directory``/``artifacts``) and runtime.

    The baseline has no ``directory`` (it is the version itself).  ``skipped`` is non-empty
    when the candidate could not be built.  ``distilled`` marks a model fitted on the
    validation rows' distillation half (its training data is then the validation file)."""

    name: str
    description: str
    runtime: Runtime | None = None
    directory: Path | None = None
    artifacts: tuple[Artifact, ...] = ()
    skipped: str = ""
    distilled: bool = False
    notes: dict[str, object] = field(default_factory=dict)


def skipped(name: str, description: str, reason: str) -> Candidate:
    """A candidate that was considered but not built, and why."""
    return Candidate(name=name, description=description, skipped=reason)


def onnx_candidate(name: str, description: str, source: Source, directory: Path, file: str = "model.onnx",
                   *, extra: tuple[Artifact, ...] = (), runtime: Runtime | None = None) -> Candidate:
    """A candidate whose model is the ONNX graph ``directory/file`` with the version's input and
    output names; its runtime is built here unless given (e.g. compiled trees beside it)."""
    parent = source.onnx
    assert parent is not None
    art = Artifact(kind="onnx", path=file, sha256="", input_name=parent.input_name,
                   output_name=parent.output_name, output_columns=parent.output_columns)
    rt = runtime or OnnxRuntime(directory / file, input_name=parent.input_name,
                                output_name=parent.output_name, output_columns=parent.output_columns,
                                intra_op_threads=source.spec.intra_op_threads)
    return Candidate(name=name, description=description, runtime=rt, directory=directory,
                     artifacts=(art, *extra))

