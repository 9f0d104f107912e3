"""What a tiered engine returns: which tier answered, why, and both tiers' answers.

``Tier`` names the tier whose outputs are the answer; ``TierReason`` says why, one reason per
decision (each counted by the tiered engine).  Both are ``StrEnum``: they compare equal to
their string values (``d.tier == "edge"``) and print as them in metrics and logs.
"""

from __future__ import annotations

import enum

import msgspec

from tailguard.client import Result
from tailguard.decision import Decision

__all__ = ["Tier", "TierReason", "TieredDecision"]


class Tier(enum.StrEnum):
    """The tier whose outputs answer a decision."""

    EDGE = "edge"  # the in-process engine (small model, always available)
    REMOTE = "remote"  # a tailguard server (large model, batching), reached over the network


class TierReason(enum.StrEnum):
    """Why a decision was answered by its tier (exactly one per decision)."""

    #: The remote answered in time from its first rung: its answer is used.
    REMOTE_USED = "remote_used"
    #: The remote's round-trip estimate plus the margin did not fit in the remaining budget:
    #: not called.
    REMOTE_SKIPPED_BUDGET = "remote_skipped_budget"
    #: The remote's circuit breaker is open (or a half-open trial is out): not called, no wait.
    REMOTE_BREAKER_OPEN = "remote_breaker_open"
    #: Called, but no answer came by the deadline (client timeout, or a reply that arrived
    #: after it): the edge answer is kept, the late reply (if any) is dropped.
    REMOTE_LATE = "remote_late"
    #: Called, and the call failed (unreachable, refused, server error...): edge answer kept.
    REMOTE_ERROR = "remote_error"
    #: The remote answered in time but from a fallback rung (its primary was skipped or
    #: failed there): the edge answer is kept unless ``accept_fallback`` is set.
    REMOTE_FALLBACK = "remote_fallback"


class TieredDecision(msgspec.Struct, gc=False):
    """One tiered decision.  ``tier``/``reason``: who answered and why.  ``edge``: the edge
    engine's decision (always there).  ``remote``: the remote's result when a reply came
    back (also when it came late or from a fallback rung and was not used), else None.
    ``elapsed_ns``: from the call to the return (the tiered engine's clock).
    ``remote_ns``: the remote call's round trip (0 when not called).  ``estimate_ns``: the
    remote round trip planned for when the decision was made (0 when the breaker was open).
    ``budget_ns``: the budget the decision ran under."""

    tier: Tier
    reason: TierReason
    edge: Decision
    remote: Result | None
    elapsed_ns: int
    remote_ns: int
    estimate_ns: int
    budget_ns: int

    def output(self, name: str) -> float:
        """One output of the answering tier, by name."""
        if self.tier is Tier.REMOTE and self.remote is not None:
            return self.remote.outputs[name]
        return self.edge.output(name)

    @property
    def outputs(self) -> dict[str, float]:
        """The answering tier's outputs by name (a new dict)."""
        if self.tier is Tier.REMOTE and self.remote is not None:
            return dict(self.remote.outputs)
        e = self.edge
        return {n: float(v) for n, v in zip(e.output_names, e.outputs.tolist(), strict=True)}

    @property
    def model_version(self) -> str:
        """The model version that produced the answer (empty for a non-model rung)."""
        if self.tier is Tier.REMOTE and self.remote is not None:
            return self.remote.model_version
        return self.edge.model_version

    @property
    def rung(self) -> str:
        """The ladder rung that answered, in the answering tier's ladder."""
        if self.tier is Tier.REMOTE and self.remote is not None:
            return self.remote.rung
        return self.edge.rung
