"""Priority classes of a load run: which share of requests each class gets, and its budget.

A mix is written ``"critical=0.1,normal=0.3,bulk=0.6"`` (weights, normalised to sum to 1; a
bare name means weight 1) and budgets ``"critical=300us,normal=2ms"`` (durations as in the
service spec).  A class without a budget has none: its OK replies are never late.  The empty
class name ``""`` asks the server for its default class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tailguard.spec import Duration

__all__ = ["ClassMix", "PriorityMix", "parse_budgets", "parse_mix"]


@dataclass(frozen=True)
class ClassMix:
    """One class of the mix: its name, share of requests (0-1] and budget in seconds (or None)."""

    name: str
    weight: float
    budget_s: float | None = None


def _pairs(text: str, what: str) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not name:
            raise ValueError(f"bad {what} entry {part!r}: expected NAME=VALUE")
        out.append((name, value.strip() if sep else None))
    names = [n for n, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{what} names a class twice: {', '.join(dup)}")
    return out


def parse_budgets(text: str) -> dict[str, float]:
    """``"critical=300us,normal=2ms"`` -> ``{"critical": 0.0003, "normal": 0.002}`` (seconds)."""
    budgets: dict[str, float] = {}
    for name, value in _pairs(text, "budgets"):
        if value is None:
            raise ValueError(f"budget of {name!r} has no value: expected {name}=DURATION")
        budgets[name] = float(Duration.parse(value))
    return budgets


def parse_mix(text: str, budgets: dict[str, float] | None = None) -> PriorityMix:
    """Parse a mix such as ``"critical=0.1,normal=0.3,bulk=0.6"``; ``""`` is one default class.

    Weights must be finite and positive; they are normalised to sum to 1.  ``budgets`` (seconds
    by class name) attach each class's budget.
    """
    budgets = budgets or {}
    pairs = _pairs(text, "mix") or [("", None)]
    classes: list[ClassMix] = []
    for name, value in pairs:
        try:
            w = 1.0 if value is None else float(value)
        except ValueError:
            raise ValueError(f"weight of {name!r} is not a number: {value!r}") from None
        if not (math.isfinite(w) and w > 0):
            raise ValueError(f"weight of {name!r} must be positive, got {value!r}")
        classes.append(ClassMix(name, w, budgets.get(name)))
    total = sum(c.weight for c in classes)
    return PriorityMix(tuple(ClassMix(c.name, c.weight / total, c.budget_s) for c in classes))


@dataclass(frozen=True)
class PriorityMix:
    """The classes of a run, in the order given; ``draw`` assigns classes to requests."""

    classes: tuple[ClassMix, ...]

    @property
    def names(self) -> list[str]:
        """Class names in order (``""`` for the server's default class)."""
        return [c.name for c in self.classes]

    def with_budgets(self, budgets: dict[str, float]) -> PriorityMix:
        """The same mix with budgets filled in from ``budgets`` where a class has none."""
        return PriorityMix(tuple(
            ClassMix(c.name, c.weight, c.budget_s if c.budget_s is not None else budgets.get(c.name))
            for c in self.classes))

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Class indices for ``n`` requests, drawn independently with the mix's weights."""
        if len(self.classes) == 1:
            return np.zeros(n, dtype=np.int64)
        p = np.array([c.weight for c in self.classes])
        return rng.choice(len(self.classes), size=n, p=p / p.sum())

    def describe(self) -> str:
        """``critical=0.10,normal=0.30,bulk=0.60`` (``default`` for the unnamed class)."""
        return ",".join(f"{c.name or 'default'}={c.weight:.2f}" for c in self.classes)
