"""Build a service's drift reference from training data: read feature rows, score them, save.

``tailguard drift reference SERVICE_DIR --data FILE`` and the trading example's training
step both end here.  The data is the training set's feature rows, by column name
(``view.field``, the names of the engine's wide vector; ``tailguard inspect`` lists them):

* ``.npz``: either a 2-D array ``features`` with a 1-D string array ``columns``, or one 1-D
  array per column, named by the column;
* ``.csv``: a header line of column names, then one row per example (an empty field is a
  missing value).

Columns the service does not read are ignored; a column it reads but the file lacks is an
error.  The reference's prediction signals are the serving primary model (the first ladder
rung) run over the same rows, so the reference describes what that model answered on its
training data.  Its provenance — the model version and content hash, the live feature view
versions, the row count — is saved with it.

Owner: the caller's thread (offline: loading and scoring take seconds, not microseconds).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tailguard.observe.reference import PREDICTION, DriftReferenceError, Reference

if TYPE_CHECKING:
    from tailguard.service import Service

__all__ = ["build_service_reference", "read_features", "write_service_reference"]

_CHUNK = 4096  # rows per model call


def read_features(path: str | Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """Feature rows (float32, rows x columns) and their column names from ``.npz`` or ``.csv``."""
    p = Path(path)
    if not p.is_file():
        raise DriftReferenceError(f"no training data at {p}")
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            if "features" in z.files:
                if "columns" not in z.files:
                    raise DriftReferenceError(f"{p}: a 'features' array needs a 'columns' array of names")
                x = np.asarray(z["features"], dtype=np.float32)
                names = tuple(str(c) for c in z["columns"].tolist())
            else:
                names = tuple(z.files)
                cols = [np.asarray(z[c], dtype=np.float32) for c in names]
                x = np.column_stack(cols) if cols else np.zeros((0, 0), dtype=np.float32)
    elif p.suffix == ".csv":
        with p.open(newline="") as f:
            names = tuple(c.strip() for c in next(csv.reader(f), []))
        x = np.genfromtxt(p, delimiter=",", skip_header=1, dtype=np.float64, missing_values="",
                          filling_values=np.nan, ndmin=2).astype(np.float32)
    else:
        raise DriftReferenceError(f"{p}: training data must be .npz or .csv")
    if x.ndim != 2 or x.shape[1] != len(names) or x.shape[0] == 0:
        raise DriftReferenceError(f"{p}: expected rows of {len(names)} named columns, found shape {x.shape}")
    return x, names


def build_service_reference(service: Service, features: np.ndarray, columns: Sequence[str], *,
                            bins: int = 10, sample_size: int = 1024) -> Reference:
    """The reference of ``features`` (rows, named by ``columns``) for ``service``: its feature
    columns, and the primary model's outputs on those rows."""
    engine = service.engine
    wanted = engine.assembler.columns
    pos = {c: i for i, c in enumerate(columns)}
    missing = [c for c in wanted if c not in pos]
    if missing:
        raise DriftReferenceError(f"the training data lacks columns the service reads: {missing}")
    x = np.ascontiguousarray(np.asarray(features, dtype=np.float32)[:, [pos[c] for c in wanted]])
    rung = engine.rungs[0]
    model = rung.model
    if model is None:  # the spec guarantees a model first; a hand-built engine might not
        raise DriftReferenceError("the first ladder rung is not a model: nothing to take predictions from")
    runtime = getattr(model.runtime, "inner", model.runtime)  # an isolated model: its own runtime
    inputs = [wanted.index(c) for c in model.manifest.inputs]
    outputs = np.empty((x.shape[0], len(engine.output_names)), dtype=np.float32)
    for a in range(0, x.shape[0], _CHUNK):
        outputs[a:a + _CHUNK] = runtime.run(np.ascontiguousarray(x[a:a + _CHUNK][:, inputs]))
    names = (*wanted, *(PREDICTION + o for o in engine.output_names))
    views = sorted({c.split(".", 1)[0] for c in wanted})
    meta = {
        "service": service.spec.name,
        "model": model.label,
        "model_content_hash": model.manifest.content_hash,
        "feature_versions": {v: service.feature_versions[v] for v in views},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return Reference.build(np.hstack([x, outputs]), names, len(wanted), bins=bins, sample_size=sample_size,
                           meta=meta)


def write_service_reference(service: Service, data: str | Path, out: str | Path | None = None, *,
                            bins: int = 10, sample_size: int = 1024) -> Path:
    """Read ``data``, build the reference, save it (default: the ``[drift] reference`` path
    in the service directory); returns where it was written."""
    x, names = read_features(data)
    ref = build_service_reference(service, x, names, bins=bins, sample_size=sample_size)
    target = Path(out) if out is not None else service.directory / service.spec.drift.reference
    return ref.save(target)
