"""The declared distribution shift: a small TOML file given with ``--shift``.

One table per shifted value.  A feature column is named ``view.field`` (written as nested
tables, ``[stats.price_ewm]``, or quoted, ``["stats.price_ewm"]``); a request context field
by its bare name (``[price]``).  Each table holds either ``mean`` and/or ``std`` (the
values are moved so that they have this mean and standard deviation) or ``scale`` and/or
``offset`` (each value becomes ``value * scale + offset``)::

    [stats.price_ewm]
    mean = 100.0
    std = 3.0

    [price]
    scale = 1.5
    offset = 2.0

The same shift applies to the synthetic values the load test writes and sends and, with
``--data``, to the labelled rows' feature columns before the primary model scores them.
Anything else (unknown keys, a column the service does not serve, a negative ``std``, a
non-number) is a ``BudgetCheckError``.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.checkbudget.problems import BudgetCheckError

__all__ = ["FieldShift", "Shift", "load_shift"]

_KEYS = ("mean", "std", "scale", "offset")


@dataclass(frozen=True)
class FieldShift:
    """How one column moves: to ``mean``/``std`` (None: keep the column's own), or by
    ``value * scale + offset``.  The two kinds are not mixed in one column."""

    mean: float | None = None
    std: float | None = None
    scale: float = 1.0
    offset: float = 0.0

    def apply(self, values: np.ndarray) -> np.ndarray:
        """The shifted copy of a 1-D column (float64); non-finite values stay as they are."""
        x = np.asarray(values, dtype=np.float64).copy()
        ok = np.isfinite(x)
        if not ok.any():
            return x
        if self.mean is not None or self.std is not None:
            m = float(x[ok].mean())
            s = float(x[ok].std())
            target_m = m if self.mean is None else self.mean
            target_s = s if self.std is None else self.std
            z = (x[ok] - m) / s if s > 0 else np.zeros(int(ok.sum()))
            x[ok] = target_m + z * target_s
        else:
            x[ok] = x[ok] * self.scale + self.offset
        return x

    def as_dict(self) -> dict[str, float]:
        """The declared values only (for the report)."""
        if self.mean is not None or self.std is not None:
            return {k: v for k, v in (("mean", self.mean), ("std", self.std)) if v is not None}
        return {"scale": self.scale, "offset": self.offset}


@dataclass(frozen=True)
class Shift:
    """Feature shifts by ``view.field`` and context shifts by field name (both may be empty)."""

    features: Mapping[str, FieldShift] = field(default_factory=dict)
    context: Mapping[str, FieldShift] = field(default_factory=dict)

    def as_dict(self) -> dict[str, dict[str, float]]:
        """Every shifted column with its declared values."""
        return {**{k: v.as_dict() for k, v in self.features.items()},
                **{k: v.as_dict() for k, v in self.context.items()}}


def _number(path: Path, where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BudgetCheckError(f"{path}: [{where}] {key} must be a finite number, got {value!r}")
    return float(value)


def _field_shift(path: Path, where: str, table: Mapping[str, Any]) -> FieldShift:
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise BudgetCheckError(f"{path}: [{where}] has unknown key(s) {unknown}; "
                               "use mean/std or scale/offset")
    if not table:
        raise BudgetCheckError(f"{path}: [{where}] declares nothing; use mean/std or scale/offset")
    v = {k: _number(path, where, k, table[k]) for k in table}
    if {"mean", "std"} & set(v) and {"scale", "offset"} & set(v):
        raise BudgetCheckError(f"{path}: [{where}] mixes mean/std with scale/offset; declare one kind")
    if v.get("std", 0.0) < 0:
        raise BudgetCheckError(f"{path}: [{where}] std must be >= 0, got {v['std']}")
    return FieldShift(mean=v.get("mean"), std=v.get("std"), scale=v.get("scale", 1.0),
                      offset=v.get("offset", 0.0))


def load_shift(path: str | Path, columns: Iterable[str], context_fields: Iterable[str]) -> Shift:
    """Read and check a shift file against the service's feature ``columns`` (``view.field``)
    and request ``context_fields``; ``BudgetCheckError`` names the first problem."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise BudgetCheckError(f"{p}: cannot read the shift file: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BudgetCheckError(f"{p}: not a TOML file: {exc}") from exc
    cols, ctx = set(columns), set(context_fields)
    features: dict[str, FieldShift] = {}
    context: dict[str, FieldShift] = {}
    for name, table in data.items():
        if not isinstance(table, dict):
            raise BudgetCheckError(f"{p}: {name!r} must be a table ([{name}]) of mean/std or scale/offset")
        nested = [k for k, v in table.items() if isinstance(v, dict)]
        if "." in name or not nested:
            # A quoted "view.field" table, or a context field's table.
            if name in cols:
                features[name] = _field_shift(p, name, table)
            elif name in ctx:
                context[name] = _field_shift(p, name, table)
            else:
                raise BudgetCheckError(f"{p}: [{name}] is neither a feature column {sorted(cols)} "
                                       f"nor a request context field {sorted(ctx)}")
            continue
        if len(nested) != len(table):
            raise BudgetCheckError(f"{p}: [{name}] mixes fields and values; write [{name}.FIELD] tables")
        for fname, sub in table.items():
            col = f"{name}.{fname}"
            if col not in cols:
                raise BudgetCheckError(f"{p}: [{col}] is not a feature column this service's models "
                                       f"read: {sorted(cols)}")
            features[col] = _field_shift(p, col, sub)
    return Shift(features=features, context=context)
