"""One ``tailguard optimize`` run: load, build candidates, measure, judge, optionally write.

The version to optimise is loaded exactly as serving would load it (``load_model``: hashes,
signature policy, pinned feature versions), so a version that could not serve is refused
before any work.  Candidates are built in a scratch directory that is removed at the end;
only ``--write`` puts anything in the repository, and then one new version, which is loaded
back the same way (unless the repository requires signatures: it is then unsigned, and
says so) before the run reports success.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tailguard.errors import ModelNotFound, TailguardError
from tailguard.models.repository import load_model
from tailguard.optimize.boosters import booster_candidates
from tailguard.optimize.candidates import Candidate, Source
from tailguard.optimize.data import Validation, load_validation
from tailguard.optimize.graph import graph_candidates
from tailguard.optimize.measure import accuracy, loss, measure_latency, metric_kind, predict
from tailguard.optimize.report import Report, Row, Status, verdict
from tailguard.optimize.write import write_version
from tailguard.registry.catalog import live_feature_versions
from tailguard.registry.sign import load_policy
from tailguard.spec import load_spec

__all__ = ["Options", "run_optimize"]

_CALIBRATION_ROWS = 512


@dataclass(frozen=True)
class Options:
    """What to try and how hard to measure.  ``write``: a candidate name, ``best``, or None."""

    max_loss: float = 0.005
    label: str = "label"
    version: str | None = None
    prune: Sequence[int] | None = None
    distill: bool = True
    reps: int = 400
    blocks: int = 5
    write: str | None = None
    #: Build candidates here and keep them (default: a temporary directory, removed).
    work: Path | None = None


def _judge(candidates: list[Candidate], data: Validation, baseline_p: np.ndarray, kind: str,
           max_loss: float) -> list[Row]:
    base_acc = accuracy(kind, data.y_eval, baseline_p, baseline_p)
    rows = [Row(candidates[0], Status.BASELINE, accuracy=base_acc, loss=0.0)]
    for c in candidates[1:]:
        if c.runtime is None:
            rows.append(Row(c, Status.SKIPPED, c.skipped))
            continue
        try:
            p = predict(c.runtime, data.x_eval)[:, 0]
        except Exception as exc:  # a converted graph may build yet fail to run; say so, go on
            rows.append(Row(c, Status.SKIPPED, f"failed on the validation rows: {exc}"))
            continue
        acc = accuracy(kind, data.y_eval, p, baseline_p)
        lost = loss(kind, base_acc.value, acc.value)
        status, reason = verdict(acc, lost, max_loss)
        rows.append(Row(c, status, reason, acc, lost))
    return rows


def _write(report: Report, source: Source, opts: Options, service_dir: Path) -> None:
    assert opts.write is not None
    row = report.best() if opts.write == "best" else report.row(opts.write)
    if row is None:
        names = [r.name for r in report.rows if r.status is Status.ACCEPTED]
        report.write_error = ("no accepted candidate beats the baseline: nothing written"
                              if opts.write == "best" else
                              f"no candidate named {opts.write!r}; accepted: {names or 'none'}")
        return
    if row.status is not Status.ACCEPTED:
        why = row.reason or "it is the version itself"
        report.write_error = f"candidate {row.name!r} is {row.status.value} ({why}): nothing written"
        return
    version, directory = write_version(source, row, report, report.rows[0])
    report.written = {"candidate": row.name, "version": version, "directory": str(directory)}
    root = directory.parent.parent
    if load_policy(root).require_signature:
        report.written["note"] = "unsigned: sign it (tailguard models sign) before it can load"
        return
    try:  # a version that would not serve must not stay where "latest" would select it
        load_model(source.spec, service_dir, live_feature_versions(service_dir), version=version)
    except TailguardError:
        shutil.rmtree(directory)
        report.written = {}
        raise


def run_optimize(service_dir: str | Path, model: str, data_path: str | Path, opts: Options) -> Report:
    """Build, measure and judge every candidate for ``model``; write one if ``opts.write``."""
    root = Path(service_dir).resolve()
    spec = load_spec(root)
    ms = next((m for m in spec.models if m.name == model), None)
    if ms is None:
        names = [m.name for m in spec.models]
        raise ModelNotFound(f"the service declares no model {model!r}; models: {names}")
    live = live_feature_versions(root, spec)
    loaded = load_model(ms, root, live, version=opts.version)
    manifest = loaded.manifest
    data = load_validation(data_path, manifest.inputs, label=opts.label)
    baseline_kind = loaded.runtime.kind
    with tempfile.TemporaryDirectory(prefix="tailguard-optimize-") as tmp:
        work = opts.work or Path(tmp)
        source = Source(spec=ms, directory=(root / ms.repository).resolve() / ms.name / loaded.version,
                        manifest=manifest, work=work)
        candidates = [Candidate("baseline", f"the version as served ({baseline_kind})",
                                runtime=loaded.runtime)]
        calibration = data.x_distill[:_CALIBRATION_ROWS]
        candidates += graph_candidates(source, calibration, baseline_kind=baseline_kind)
        candidates += booster_candidates(source, data, baseline_kind=baseline_kind, prune=opts.prune,
                                         distill=opts.distill)
        baseline_p = predict(loaded.runtime, data.x_eval)[:, 0]
        kind = metric_kind(manifest, data.y_eval, baseline_p)
        rows = _judge(candidates, data, baseline_p, kind, opts.max_loss)
        timed = {r.name: r.candidate.runtime for r in rows
                 if r.status is not Status.SKIPPED and r.candidate.runtime is not None}
        latency = measure_latency(timed, data.x_eval, reps=opts.reps, blocks=opts.blocks)
        for r in rows:
            r.latency = latency.get(r.name)
        report = Report(
            model=ms.name, version=loaded.version, content_hash=manifest.content_hash, metric=kind,
            max_loss=opts.max_loss, rows=rows,
            validation={"uri": data.uri, "sha256": data.sha256, "rows": data.rows,
                        "eval_rows": len(data.y_eval), "distill_rows": len(data.y_distill)},
        )
        if opts.write is not None:
            _write(report, source, opts, root)
    return report
