"""Write a trained LightGBM model as a repository version: ONNX + compiled trees + manifest.

Needs the ``train`` extra (LightGBM, onnxmltools) and, for the compiled form, the ``trees``
extra and a C compiler.  The version directory is written under a temporary name and renamed
into place, so a reader never sees a half-written version.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tailguard.errors import ModelLoadError
from tailguard.models.manifest import Artifact, Manifest, write_manifest
from tailguard.models.trees import compile_lightgbm

__all__ = ["export_lightgbm"]


def _to_onnx(booster: Any, n_features: int, path: Path) -> None:
    try:
        import onnxmltools
        from onnxmltools.convert.common.data_types import FloatTensorType
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ModelLoadError("ONNX export needs the 'train' extra: pip install 'tailguard[train]'") from exc
    onx = onnxmltools.convert_lightgbm(
        booster,
        initial_types=[("x", FloatTensorType([None, n_features]))],
        zipmap=False,
        target_opset=15,
    )
    path.write_bytes(onx.SerializeToString())


def export_lightgbm(
    booster: Any,
    root: str | Path,
    name: str,
    version: str,
    *,
    inputs: Sequence[str],
    outputs: Sequence[str],
    feature_versions: Mapping[str, str],
    training: Mapping[str, Any] | None = None,
    compile_trees: bool = True,
) -> Manifest:
    """Save a binary-classifier LightGBM booster as ``root/name/version`` and return its manifest."""
    final = Path(root) / name / version
    tmp = final.with_name(f".{version}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    booster.save_model(str(tmp / "model.txt"))
    _to_onnx(booster, len(inputs), tmp / "model.onnx")
    arts = [
        Artifact(
            kind="onnx",
            path="model.onnx",
            sha256="",
            input_name="x",
            output_name="probabilities",
            output_columns=(1,),
        )
    ]
    if compile_trees:
        compile_lightgbm(tmp / "model.txt", tmp, lib_name="model.so")
        arts.append(Artifact(kind="trees", path="model.so", sha256=""))
    m = Manifest(
        name=name,
        version=version,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        feature_versions=dict(feature_versions),
        artifacts=tuple(arts),
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        training=dict(training or {}),
    )
    m = write_manifest(tmp, m)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return m
