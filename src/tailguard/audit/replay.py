"""Replaying recorded decisions (``tailguard audit replay``): same model, same features, same
outputs — bit for bit.

Each ``DecisionRecord`` holds the exact float32 feature rows the engine scored and the rung
that answered each row.  Replay verifies the log first (an unverified log is never
replayed), then, per row answered by a model rung, runs **the recorded model version** on
the recorded row (gathered to the model's inputs exactly as the engine does) and compares
the float64 outputs by their bytes: the rung's loaded model when it is that version, else
the version the record names, loaded from the service's model repository (a canary's, or one
swapped out since) with ``load_model``'s checks and then held to the record's content hash.
Rows answered by the declared default are compared with it; rows answered by a last-good
answer depend on history the log does not replay and are counted as skipped.  A record whose
model cannot be loaded, or whose content differs from the recorded hash, is a mismatch with
its reason, not a silent pass.  Keys are not used, so PII-hashed keys replay exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from tailguard.audit.format import DecisionRecord, Entry
from tailguard.audit.problems import AuditInvalid
from tailguard.audit.verify import read_entries, verify
from tailguard.errors import TailguardError
from tailguard.models.repository import LoadedModel, load_model
from tailguard.service import Service
from tailguard.spec import RungKind

__all__ = ["ReplayReport", "replay"]

_DECODER = msgspec.msgpack.Decoder(Entry)


@dataclass
class ReplayReport:
    """Rows compared, equal and different (``mismatches``: seq, row, reason, at most 100)."""

    records: int = 0
    rows: int = 0
    equal: int = 0
    different: int = 0
    skipped: int = 0
    mismatches: list[tuple[int, int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every compared row reproduced exactly."""
        return self.different == 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"ok": self.ok, "records": self.records, "rows": self.rows, "equal": self.equal,
                "different": self.different, "skipped": self.skipped,
                "mismatches": [list(m) for m in self.mismatches]}


def replay(directory: str | Path, key: bytes | None, service: Service, *,
           public_keys: Sequence[bytes] = ()) -> ReplayReport:
    """Re-run every recorded decision of ``directory`` against ``service``'s models (the log
    is verified first with ``key`` and/or ``public_keys``; ``AuditInvalid`` if it does not)."""
    check = verify(directory, key, service.spec.name, public_keys=public_keys)
    if not check.ok:
        assert check.problem is not None
        raise AuditInvalid("the audit log does not verify, refusing to replay", check.problem)
    engine = service.engine
    rungs = engine.rungs
    width = engine.assembler.width
    report = ReplayReport()
    versions = _Versions(service)
    for info in check.infos:  # exactly the verified segments (retention leftovers skipped)
        for _, _, payload, _ in read_entries(info.path):
            rec = _DECODER.decode(payload)
            if type(rec) is not DecisionRecord:
                continue
            report.records += 1
            if rec.width != width:
                _differ(report, rec.seq, -1, f"recorded {rec.width} features, the service has {width}")
                continue
            feats = np.frombuffer(rec.features, dtype=np.float32).reshape(-1, width)
            outs = np.frombuffer(rec.outputs, dtype=np.float64).reshape(-1, rec.n_outputs)
            for row, r in enumerate(rec.rungs):
                report.rows += 1
                rung = rungs[r] if 0 <= r < len(rungs) else None
                if rung is None:
                    _differ(report, rec.seq, row, f"rung {r} does not exist")
                elif rung.kind is RungKind.LAST_GOOD:
                    report.skipped += 1
                elif rung.kind is RungKind.DEFAULT:
                    _compare(report, rec.seq, row, outs[row], np.asarray(rung.default, dtype=np.float64))
                else:
                    model, cols = rung.model, rung.cols
                    assert model is not None
                    # A batch answered by several model rungs names the first one only.
                    other = _other_model(rec, rung.label, model.manifest.content_hash)
                    if other and len(set(rec.rungs)) == 1:
                        found = versions.get(rec)
                        if isinstance(found, str):
                            _differ(report, rec.seq, row, found)
                            continue
                        model, cols = found
                    x = np.ascontiguousarray(feats[row : row + 1])
                    y = model.runtime.run(x if cols is None else x[:, cols].copy())
                    _compare(report, rec.seq, row, outs[row], y[0])
    return report


class _Versions:
    """Model versions named by records, loaded once each from the service's repository (with the
    hash and signature checks of ``load_model``), with their gather from the wide columns; or
    why one cannot stand in for the record."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._pos = {c: i for i, c in enumerate(service.engine.assembler.columns)}
        self._loaded: dict[str, tuple[LoadedModel, np.ndarray | None] | str] = {}

    def get(self, rec: DecisionRecord) -> tuple[LoadedModel, np.ndarray | None] | str:
        """The recorded version with its gather, or why it cannot replay the record."""
        label = rec.model_version
        found = self._loaded.get(label)
        if found is None:
            found = self._loaded[label] = self._load(label)
        if isinstance(found, str):
            return found
        why = _other_model(rec, found[0].label, found[0].manifest.content_hash)
        return why or found

    def _load(self, label: str) -> tuple[LoadedModel, np.ndarray | None] | str:
        name, _, version = label.partition("/")
        try:
            spec = msgspec.structs.replace(self.service.spec.model(name), warmup=0)
        except KeyError:
            return f"recorded by {label!r}: the service has no model {name!r}"
        try:
            m = load_model(spec, self.service.directory, self.service.feature_versions, version=version)
        except TailguardError as exc:
            return f"recorded by {label!r}, which cannot be loaded: {exc}"
        missing = [c for c in m.manifest.inputs if c not in self._pos]
        if missing:
            return f"recorded by {label!r}, which reads {missing}: not assembled by this service"
        idx = [self._pos[c] for c in m.manifest.inputs]
        cols = None if idx == list(range(len(self._pos))) else np.array(idx, dtype=np.intp)
        return m, cols


def _other_model(rec: DecisionRecord, label: str, content_hash: str) -> str:
    """Why the loaded model is not the recorded one ("" when it is): by content hash when the
    record has one (version 2), else by label."""
    if rec.model_hash and rec.model_hash != content_hash:
        return (f"recorded by {rec.model_version!r} (content {rec.model_hash[:12]}), loaded {label!r} "
                f"(content {content_hash[:12]})")
    if label != rec.model_version:
        return f"recorded by {rec.model_version!r}, loaded {label!r}"
    return ""


def _compare(report: ReplayReport, seq: int, row: int, recorded: np.ndarray, now: np.ndarray) -> None:
    if recorded.tobytes() == np.asarray(now, dtype=np.float64).tobytes():
        report.equal += 1
    else:
        _differ(report, seq, row, f"recorded {recorded.tolist()}, replayed {np.asarray(now).tolist()}")


def _differ(report: ReplayReport, seq: int, row: int, reason: str) -> None:
    report.different += 1
    if len(report.mismatches) < 100:
        report.mismatches.append((seq, row, reason))
