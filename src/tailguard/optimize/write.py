"""Writing a measured candidate as the repository's next model version.

The version directory is assembled under a hidden temporary name (``.<version>.tmp``, never
listed by the repository) and renamed into place, like ``models.export``.  Its manifest keeps
the parent's signature (inputs, outputs, pinned feature view versions); ``metrics`` holds
the figures measured here and ``training`` names the parent (version and content hash), the
optimisation and the validation data.  A distilled student's ``training_data`` is the
validation file (it was fitted there); every other candidate keeps the parent's.

The new version is unsigned: where ``registry.toml`` requires signatures, sign it
(``tailguard models sign``) before it can load.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

from tailguard.models.manifest import Manifest, TrainingData, write_manifest
from tailguard.models.repository import list_versions
from tailguard.optimize.candidates import Source
from tailguard.optimize.problems import OptimizeError
from tailguard.optimize.report import Report, Row

__all__ = ["next_version", "write_version"]


def next_version(root: Path, name: str) -> str:
    """One more than the highest numeric version of ``name`` under ``root`` ("1" if none)."""
    numbers = [int(v) for v in list_versions(root, name) if v.isdigit()]
    return str(max(numbers, default=0) + 1)


def _metrics(row: Row, report: Report, baseline: Row) -> dict[str, float]:
    out: dict[str, float] = {}
    if row.accuracy is not None:
        out[report.metric] = row.accuracy.value
        if row.accuracy.logloss is not None:
            out["logloss"] = row.accuracy.logloss
        out["max_abs_diff"] = row.accuracy.max_abs_diff
    if baseline.accuracy is not None:
        out[f"parent_{report.metric}"] = baseline.accuracy.value
    if row.loss is not None:
        out[f"{report.metric}_loss"] = row.loss
    if row.latency is not None:
        for b in sorted(row.latency.p50_us):
            out[f"p50_us_b{b}"] = row.latency.p50_us[b]
            out[f"p99_us_b{b}"] = row.latency.p99_us[b]
    return {k: round(v, 6) for k, v in out.items()}


def write_version(source: Source, row: Row, report: Report, baseline: Row) -> tuple[str, Path]:
    """Write ``row``'s candidate as the next version of the source's model; returns the
    version label and directory."""
    c = row.candidate
    if c.directory is None or not c.artifacts:
        raise OptimizeError(f"candidate {c.name!r} has no files to write")
    parent = source.manifest
    root = source.directory.parent.parent
    version = next_version(root, parent.name)
    final = root / parent.name / version
    tmp = final.with_name(f".{version}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(c.directory, tmp)
    training: dict[str, Any] = {
        "optimization": c.name,
        "description": c.description,
        "parent": {"version": parent.version, "content_hash": parent.content_hash},
        "validation": {k: report.validation[k] for k in ("uri", "sha256", "eval_rows", "distill_rows")},
        "max_loss": report.max_loss,
        **c.notes,
    }
    if parent.training:
        training["parent_training"] = dict(parent.training)
    data = parent.training_data
    if c.distilled:
        data = TrainingData(uri=report.validation["uri"], sha256=report.validation["sha256"],
                            rows=int(report.validation["distill_rows"]))
    m = Manifest(
        name=parent.name, version=version, inputs=parent.inputs, outputs=parent.outputs,
        feature_versions=dict(parent.feature_versions), artifacts=c.artifacts,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        training=training, training_data=data, metrics=_metrics(row, report, baseline),
    )
    write_manifest(tmp, m)
    if final.exists():
        shutil.rmtree(tmp)
        raise OptimizeError(f"{final} appeared while writing; nothing written")
    tmp.rename(final)
    return version, final
