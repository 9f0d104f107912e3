"""LightGBM candidates: compiled trees, the first k trees, a distilled student.

They need the version's booster text (``model.txt``, which ``models.export.export_lightgbm``
keeps beside the artifacts) and the ``train`` extra (LightGBM, onnxmltools); compiling needs
the ``trees`` extra and a C compiler.  Like ``export_lightgbm`` they handle binary
classifiers.

* ``trees``: the booster compiled to native code (listed when the version does not serve
  compiled trees already);
* ``prune-K``: the first K trees of the ensemble (a boosted ensemble's early trees carry most
  of the signal; the later ones refine it), exported like the original (ONNX + compiled);
* ``distill``: a small student (fewer, shallower trees) fitted by least squares to the
  teacher's log-odds on the distillation half of the validation rows, then labelled a binary
  model so it answers probabilities through the same sigmoid.  It is scored, like every
  candidate, on the other half.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.errors import ModelLoadError
from tailguard.models.manifest import Artifact
from tailguard.models.onnx import OnnxRuntime
from tailguard.models.runtime import Runtime
from tailguard.models.trees import TreesRuntime, compile_lightgbm
from tailguard.optimize.candidates import BOOSTER_FILE, Candidate, Source, onnx_candidate, skipped
from tailguard.optimize.data import Validation

__all__ = ["booster_candidates", "default_prune"]

_STUDENT_LEAVES = 7


def default_prune(n_trees: int) -> list[int]:
    """Tree counts tried by default: a half, a quarter and a tenth of the ensemble."""
    return sorted({k for k in (n_trees // 2, n_trees // 4, n_trees // 10) if 1 <= k < n_trees}, reverse=True)


def _compiled_trees(source: Source, booster_file: Path) -> Candidate:
    name, desc = "trees", "the booster compiled to native code (treelite/tl2cgen)"
    d = source.scratch(name)
    shutil.copyfile(booster_file, d / BOOSTER_FILE)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # treelite's progress lines
            compile_lightgbm(d / BOOSTER_FILE, d, lib_name="model.so")
        rt = TreesRuntime(d / "model.so")
    except ModelLoadError as exc:
        return skipped(name, desc, str(exc))
    trees = Artifact(kind="trees", path="model.so", sha256="")
    if source.onnx is None:
        return Candidate(name=name, description=desc, runtime=rt, directory=d, artifacts=(trees,))
    shutil.copyfile(source.directory / source.onnx.path, d / "model.onnx")
    return onnx_candidate(name, desc, source, d, extra=(trees,), runtime=rt)


def _exported(source: Source, booster: Any, name: str, desc: str, notes: dict[str, object]) -> Candidate:
    """``booster`` written the way ``export_lightgbm`` writes a version, in scratch."""
    from tailguard.models.export import export_lightgbm

    m = source.manifest
    compiled = source.spec.runtime != "onnx"
    root = source.work / "_export"
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # treelite's progress lines
            export_lightgbm(booster, root, name, "0", inputs=m.inputs, outputs=m.outputs,
                            feature_versions=m.feature_versions, compile_trees=compiled)
    except ModelLoadError as exc:
        return skipped(name, desc, str(exc))
    d = source.scratch(name)
    d.rmdir()
    (root / name / "0").rename(d)
    (d / "manifest.json").unlink()
    onnx = Artifact(kind="onnx", path="model.onnx", sha256="", input_name="x",
                    output_name="probabilities", output_columns=(1,))
    arts: tuple[Artifact, ...] = (onnx,)
    rt: Runtime
    if compiled:
        arts += (Artifact(kind="trees", path="model.so", sha256=""),)
        rt = TreesRuntime(d / "model.so")
    else:
        rt = OnnxRuntime(d / "model.onnx", input_name="x", output_name="probabilities", output_columns=(1,),
                         intra_op_threads=source.spec.intra_op_threads)
    return Candidate(name=name, description=desc, runtime=rt, directory=d, artifacts=arts, notes=notes)


def _prune(source: Source, booster: Any, k: int, n_trees: int) -> Candidate:
    import lightgbm as lgb

    name = f"prune-{k}"
    small = lgb.Booster(model_str=booster.model_to_string(num_iteration=k))
    return _exported(source, small, name, f"the first {k} of {n_trees} trees",
                     {"trees": k, "parent_trees": n_trees})


def _distill(source: Source, booster: Any, n_trees: int, data: Validation) -> Candidate:
    import lightgbm as lgb

    name = "distill"
    rounds = max(5, n_trees // 5)
    desc = (f"student of {rounds} trees x {_STUDENT_LEAVES} leaves fitted to the teacher's log-odds "
            f"on {len(data.y_distill)} distillation rows")
    target = np.asarray(booster.predict(data.x_distill, raw_score=True), dtype=np.float64)
    params = {"objective": "regression", "num_leaves": _STUDENT_LEAVES, "learning_rate": 0.1,
              "min_data_in_leaf": max(5, min(100, len(target) // 200)), "num_threads": 1,
              "deterministic": True, "seed": 7, "verbose": -1}
    student = lgb.train(params, lgb.Dataset(data.x_distill, target), num_boost_round=rounds)
    # The trees sum to the log-odds: declared binary, the booster (and its ONNX and compiled
    # forms) applies the sigmoid the teacher applies.
    text = student.model_to_string()
    relabelled = text.replace("\nobjective=regression\n", "\nobjective=binary sigmoid:1\n", 1)
    relabelled = relabelled.replace("[objective: regression]", "[objective: binary]")
    if relabelled == text:
        return skipped(name, desc, "LightGBM wrote the student in an unexpected form (no objective line)")
    c = _exported(source, lgb.Booster(model_str=relabelled), name, desc,
                  {"trees": rounds, "leaves": _STUDENT_LEAVES, "parent_trees": n_trees,
                   "distill_rows": len(target)})
    c.distilled = True
    return c


def booster_candidates(source: Source, data: Validation, *, baseline_kind: str,
                       prune: Sequence[int] | None = None, distill: bool = True) -> list[Candidate]:
    """Every LightGBM candidate of ``source`` (skipped ones included, each saying why).
    ``prune``: tree counts to keep (default ``default_prune``)."""
    names = ["trees", "prune", *(["distill"] if distill else [])]
    booster_file = source.booster
    if booster_file is None:
        return [skipped(n, "LightGBM candidate", f"the version kept no booster text ({BOOSTER_FILE})")
                for n in names]
    try:
        import lightgbm as lgb
    except ImportError:
        return [skipped(n, "LightGBM candidate", "needs LightGBM: pip install 'tailguard[train]'")
                for n in names]
    booster = lgb.Booster(model_file=str(booster_file))
    objective = str(booster.dump_model(num_iteration=1).get("objective", ""))
    if not objective.startswith("binary"):
        return [skipped(n, "LightGBM candidate", f"objective {objective!r}: only binary classifiers")
                for n in names]
    n_trees = int(booster.num_trees())
    out: list[Candidate] = []
    if baseline_kind == "trees":
        out.append(skipped("trees", "the booster compiled to native code",
                           "the baseline already serves compiled trees"))
    else:
        out.append(_compiled_trees(source, booster_file))
    ks = default_prune(n_trees) if prune is None else sorted({k for k in prune if 1 <= k < n_trees},
                                                            reverse=True)
    out += [_prune(source, booster, k, n_trees) for k in ks]
    if distill:
        out.append(_distill(source, booster, n_trees, data))
    return out
