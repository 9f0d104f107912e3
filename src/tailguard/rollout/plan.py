"""The declarative rollout plan: which version, through which stages, under which guards.

A plan names a model of the service and a candidate version, and lists stages in order::

    RolloutPlan(model="alpha", version="2", stages=(
        Stage(kind=StageKind.SHADOW, share=0.10, min_duration_s=60, min_samples=500,
              guards=Guards(max_error_rate=0.01, max_divergence=0.05)),
        Stage(kind=StageKind.CANARY, share=0.05, min_duration_s=120, min_samples=500,
              guards=Guards(p99_latency_s=300e-6, max_error_rate=0.01, max_fallback_rate=0.05)),
        Stage(kind=StageKind.CANARY, share=0.25, ...),
        Stage(kind=StageKind.PROMOTE),
    ))

``parse_plan`` decodes one from a mapping (a TOML table or JSON object) and ``validate_plan``
checks it against the service; both raise ``PlanError`` with a message that names the field
(``$.stages[1].share``) and touch nothing.  Stage order: shadow stages first, then canary
stages with non-decreasing shares (or one A/B stage), then at most one ``promote``, last.
Every shadow, canary and A/B stage needs guards with at least one limit.

Owner: any thread (pure data and file reads).
"""

from __future__ import annotations

import enum
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from tailguard.errors import TailguardError

if TYPE_CHECKING:
    from tailguard.service import Service

__all__ = [
    "Guards", "PlanError", "RolloutPlan", "Stage", "StageKind", "check_plan", "parse_plan", "validate_plan",
]


class PlanError(TailguardError):
    """A rollout plan is invalid (names the field); nothing was changed."""

    code = "rollout_plan_invalid"


class StageKind(enum.Enum):
    """What a stage does with the candidate."""

    SHADOW = "shadow"  # the candidate sees a share of copies off the reply path; never answers
    CANARY = "canary"  # the candidate answers a share of routing keys (sticky per key)
    AB = "ab"  # as canary, with exposure records and a sequential test of an outcome metric
    PROMOTE = "promote"  # the candidate becomes the stable version


class Guards(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Limits on the candidate's decisions in a window; any limit exceeded rolls back.

    ``p99_latency_s``: p99 of the candidate decisions' total time (shadow: of its inference);
    ``max_error_rate``: share of candidate decisions flagged MODEL_FAILED (shadow: runs that
    raised or gave non-finite outputs); ``max_fallback_rate``: share answered below the
    candidate's rung; ``max_divergence``: share of compared outputs with
    ``|candidate - stable| > divergence_tolerance``.  A window is judged once it holds
    ``min_window_samples`` candidate decisions (comparisons for divergence)."""

    p99_latency_s: float | None = None
    max_error_rate: float | None = None
    max_fallback_rate: float | None = None
    max_divergence: float | None = None
    divergence_tolerance: float = 0.05
    min_window_samples: int = 50

    def limits(self) -> dict[str, float]:
        """The limits that are set, by name."""
        out = {}
        for name in ("p99_latency_s", "max_error_rate", "max_fallback_rate", "max_divergence"):
            v = getattr(self, name)
            if v is not None:
                out[name] = float(v)
        return out


class Stage(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One step of a plan: ``share`` of traffic (0..1), held for at least ``min_duration_s``
    and ``min_samples`` candidate decisions (shadow: comparisons) before the next stage."""

    kind: StageKind
    share: float = 0.0
    min_duration_s: float = 0.0
    min_samples: int = 0
    guards: Guards | None = None


class RolloutPlan(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Roll ``model`` out to ``version`` through ``stages``.  ``window_s``: the guards' window;
    ``salt``: mixed into the routing hash (a new salt draws a new canary population);
    ``ab_metric_alpha``: the A/B test's false-positive rate under continuous monitoring."""

    model: str
    version: str
    stages: tuple[Stage, ...]
    window_s: float = 10.0
    salt: str = ""
    ab_metric_alpha: float = 0.05


def parse_plan(data: Any) -> RolloutPlan:
    """Decode a plan from a mapping (TOML table, JSON object) or JSON bytes; ``PlanError``
    naming the field when it does not fit the schema."""
    try:
        if isinstance(data, bytes | str):
            return msgspec.json.decode(data, type=RolloutPlan)
        return msgspec.convert(data, RolloutPlan)
    except msgspec.ValidationError as exc:
        raise PlanError(f"invalid rollout plan: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise PlanError(f"rollout plan is not valid JSON: {exc}") from exc


_ORDER = {StageKind.SHADOW: 0, StageKind.CANARY: 1, StageKind.AB: 1, StageKind.PROMOTE: 2}


def _check_stage(i: int, st: Stage) -> None:
    where = f"$.stages[{i}]"
    if not (isinstance(st.share, int | float) and math.isfinite(st.share) and 0.0 <= st.share <= 1.0):
        raise PlanError(f"{where}.share must be within 0..1, got {st.share!r}")
    if st.kind in (StageKind.CANARY, StageKind.AB, StageKind.SHADOW) and st.share <= 0.0:
        raise PlanError(f"{where}.share must be above 0 for a {st.kind.value} stage")
    if st.kind is StageKind.AB and st.share >= 1.0:
        raise PlanError(f"{where}.share must be below 1 for an A/B stage (arm A needs traffic)")
    if not (math.isfinite(st.min_duration_s) and st.min_duration_s >= 0.0):
        raise PlanError(f"{where}.min_duration_s must be >= 0, got {st.min_duration_s!r}")
    if st.min_samples < 0:
        raise PlanError(f"{where}.min_samples must be >= 0, got {st.min_samples}")
    if st.kind is StageKind.PROMOTE:
        return
    if st.guards is None or not st.guards.limits():
        raise PlanError(f"{where}.guards: a {st.kind.value} stage needs guards with at least one limit "
                        "(p99_latency_s, max_error_rate, max_fallback_rate, max_divergence)")
    g = st.guards
    for name, v in g.limits().items():
        if not (math.isfinite(v) and v >= 0.0) or (name != "p99_latency_s" and v > 1.0):
            raise PlanError(f"{where}.guards.{name} must be a rate in 0..1 (p99_latency_s: seconds >= 0), "
                            f"got {v!r}")
    if g.min_window_samples < 1:
        raise PlanError(f"{where}.guards.min_window_samples must be >= 1")
    if g.max_divergence is not None and st.kind is not StageKind.SHADOW and g.divergence_tolerance < 0:
        raise PlanError(f"{where}.guards.divergence_tolerance must be >= 0")


def check_plan(plan: RolloutPlan) -> None:
    """Check a plan on its own (shares, order, guards); ``PlanError`` naming the field."""
    if not plan.stages:
        raise PlanError("$.stages: a plan needs at least one stage")
    if not (math.isfinite(plan.window_s) and plan.window_s > 0):
        raise PlanError(f"$.window_s must be > 0, got {plan.window_s!r}")
    if not 0.0 < plan.ab_metric_alpha < 1.0:
        raise PlanError(f"$.ab_metric_alpha must be within (0, 1), got {plan.ab_metric_alpha!r}")
    last_order, last_share = -1, 0.0
    for i, st in enumerate(plan.stages):
        _check_stage(i, st)
        order = _ORDER[st.kind]
        if order < last_order:
            raise PlanError(f"$.stages[{i}]: a {st.kind.value} stage cannot follow a "
                            f"{plan.stages[i - 1].kind.value} stage (order: shadow, canary/ab, promote)")
        if st.kind is StageKind.PROMOTE and i != len(plan.stages) - 1:
            raise PlanError(f"$.stages[{i}]: promote must be the last stage")
        if st.kind in (StageKind.CANARY, StageKind.AB):
            if st.share < last_share:
                raise PlanError(f"$.stages[{i}].share {st.share} is below the previous stage's {last_share}: "
                                "canary shares only grow (roll back instead)")
            last_share = st.share
        last_order = order


def validate_plan(plan: RolloutPlan, service: Service) -> None:
    """Check ``plan`` against ``service``: ``check_plan``, then the model is declared and
    serves a rung of the ladder, and the version exists in its repository and is not the one
    serving.  ``PlanError`` (nothing changed) otherwise."""
    from tailguard.models.repository import list_versions

    check_plan(plan)
    spec = next((m for m in service.spec.models if m.name == plan.model), None)
    if spec is None:
        raise PlanError(f"$.model: the service declares no model {plan.model!r}; "
                        f"models: {[m.name for m in service.spec.models]}")
    rungs = [r.name for r in service.engine.rungs if r.model is not None and r.model.name == plan.model]
    if not rungs:
        raise PlanError(f"$.model: model {plan.model!r} answers on no rung of the ladder")
    repo = (Path(service.directory) / spec.repository).resolve()
    versions = list_versions(repo, plan.model)
    if plan.version not in versions:
        raise PlanError(f"$.version: model {plan.model!r} has no version {plan.version!r}; "
                        f"versions: {versions}")
    active = service.models[plan.model].version
    if plan.version == active:
        raise PlanError(f"$.version: {plan.model}/{plan.version} is already the active version")
