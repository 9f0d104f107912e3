"""The rollout controller: walks a plan's stages, judges the guards, rolls back on its own.

State lives in one serialisable struct, ``RolloutState`` (the plan, the phase, the current
stage, when it started, the samples seen and every ``RolloutEvent`` so far), so it can be
stored and broadcast as a goal state later (``msgspec.json.encode(controller.state)``).

``evaluate(now_ns)`` runs on the side path (``Rollout.drain``) with the injected clock:

1. **guards** — if the current window holds enough samples, any limit of the stage's guards
   that the candidate exceeds (p99 latency over the SLO, error rate, fallback rate,
   divergence from the stable version) **rolls back**: the actuator routes 0% to the
   candidate and turns its flag off, the phase becomes ``ROLLED_BACK`` and a ``RolloutEvent``
   records the reason, the window's figures and the time;
2. **window** — every ``plan.window_s`` the window's samples are added to the stage's count
   and a new window opens;
3. **advance** — once the stage has run ``min_duration_s`` and seen ``min_samples``, the next
   stage is applied (its share, kind and guards), or, for ``promote``, the candidate becomes
   the stable version.  A plan whose last stage is not ``promote`` holds there until
   ``promote()`` or ``rollback()`` is called.

Owner: the engine's owner thread (the actuator changes what the engine serves).
"""

from __future__ import annotations

import enum
import math
from typing import Protocol

import msgspec

from tailguard.clock import Clock
from tailguard.rollout.plan import Guards, RolloutPlan, Stage, StageKind
from tailguard.rollout.window import GuardWindow

__all__ = ["Actuator", "Controller", "EventKind", "Phase", "RolloutEvent", "RolloutState", "tripped"]


class Phase(enum.Enum):
    """Where a rollout is."""

    DEPLOYED = "deployed"  # candidate loaded and warm, flag off: no traffic
    ACTIVE = "active"  # flag on: a stage routes traffic or copies to the candidate
    PROMOTED = "promoted"  # the candidate is the stable version
    ROLLED_BACK = "rolled_back"  # flag off, 0% to the candidate; ``events`` says why


class EventKind(enum.Enum):
    """What a ``RolloutEvent`` records."""

    STARTED = "started"
    STAGE = "stage"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"


class RolloutEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One transition: its kind, the stage index it happened in, why, the figures behind it
    (window figures: p99_latency_s, error_rate, ...), monotonic ``at_ns`` and wall ``wall_ns``."""

    kind: EventKind
    stage: int
    reason: str
    figures: dict[str, float]
    at_ns: int
    wall_ns: int


class RolloutState(msgspec.Struct, kw_only=True):
    """Everything the controller knows, serialisable (``msgspec.json.encode``)."""

    plan: RolloutPlan
    phase: Phase = Phase.DEPLOYED
    stage: int = 0
    stage_started_ns: int = 0
    window_started_ns: int = 0
    stage_samples: int = 0
    events: list[RolloutEvent] = msgspec.field(default_factory=list)


class Actuator(Protocol):
    """What the controller drives (``Rollout``): route a stage, promote, turn the flag off."""

    def apply_stage(self, stage: Stage) -> None:
        """Route traffic as ``stage`` says (its kind and share)."""
        ...

    def switch_to_candidate(self) -> None:
        """Make the candidate the stable version."""
        ...

    def deactivate(self) -> None:
        """Route 0% to the candidate and turn its flag off."""
        ...

    def extra_figures(self) -> dict[str, float]:
        """Figures recorded with stage events besides the window's (e.g. the A/B test)."""
        ...


def _finite(figures: dict[str, float]) -> dict[str, float]:
    # JSON has no NaN: an empty window's p99 is left out instead.
    return {k: v for k, v in figures.items() if math.isfinite(v)}


def tripped(guards: Guards, window: GuardWindow, kind: StageKind) -> str | None:
    """Why the window breaks ``guards`` (None: it does not, or it is not full enough yet).  Checked
    in this order: error rate (unambiguous), p99 latency, fallback rate, divergence."""
    need = guards.min_window_samples
    if window.n >= need:
        fig = window.figures()
        if guards.max_error_rate is not None and fig["error_rate"] > guards.max_error_rate:
            return (f"candidate error rate {fig['error_rate']:.2%} is over the limit "
                    f"{guards.max_error_rate:.2%} ({window.failed} of {window.n})")
        if guards.p99_latency_s is not None and fig["p99_latency_s"] > guards.p99_latency_s:
            what = "inference" if kind is StageKind.SHADOW else "decision"
            return (f"candidate p99 {what} latency {fig['p99_latency_s'] * 1e6:.0f} us is over the "
                    f"{guards.p99_latency_s * 1e6:.0f} us SLO")
        if (guards.max_fallback_rate is not None and kind is not StageKind.SHADOW
                and fig["fallback_rate"] > guards.max_fallback_rate):
            return (f"candidate fallback rate {fig['fallback_rate']:.2%} is over the limit "
                    f"{guards.max_fallback_rate:.2%} ({window.fallbacks} of {window.n} answered below its "
                    "rung)")
    if guards.max_divergence is not None and window.compared >= need:
        div = window.over_tolerance / window.compared
        if div > guards.max_divergence:
            return (f"candidate diverges from the stable version: {div:.2%} of {window.compared} compared "
                    f"outputs differ by more than {guards.divergence_tolerance:g} "
                    f"(limit {guards.max_divergence:.2%})")
    return None


class Controller:
    """Drives ``actuator`` through ``state.plan`` (see the module docstring)."""

    def __init__(self, state: RolloutState, actuator: Actuator, window: GuardWindow, clock: Clock) -> None:
        self.state = state
        self.actuator = actuator
        self.window = window
        self.clock = clock
        self._window_ns = round(state.plan.window_s * 1e9)

    @property
    def stage(self) -> Stage:
        """The current stage."""
        return self.state.plan.stages[self.state.stage]

    def _event(self, kind: EventKind, reason: str, figures: dict[str, float], now_ns: int) -> RolloutEvent:
        ev = RolloutEvent(kind=kind, stage=self.state.stage, reason=reason, figures=_finite(figures),
                          at_ns=now_ns, wall_ns=self.clock.wall_ns())
        self.state.events.append(ev)
        return ev

    def _enter(self, index: int, now_ns: int) -> None:
        st = self.state
        st.stage = index
        st.stage_started_ns = st.window_started_ns = now_ns
        st.stage_samples = 0
        self.window.reset()
        stage = st.plan.stages[index]
        if stage.kind is StageKind.PROMOTE:
            self._promote("plan reached its promote stage", {}, now_ns)
        else:
            self.actuator.apply_stage(stage)

    def _promote(self, reason: str, figures: dict[str, float], now_ns: int) -> RolloutEvent:
        self.actuator.switch_to_candidate()
        self.state.phase = Phase.PROMOTED
        return self._event(EventKind.PROMOTED, reason, figures, now_ns)

    def start(self) -> RolloutEvent:
        """Turn the flag on and enter the first stage (from ``DEPLOYED`` only)."""
        if self.state.phase is not Phase.DEPLOYED:
            raise RuntimeError(f"a rollout starts from {Phase.DEPLOYED.value}, not {self.state.phase.value}")
        now = self.clock.now_ns()
        self.state.phase = Phase.ACTIVE
        ev = self._event(EventKind.STARTED, "started", {}, now)
        self._enter(0, now)
        return ev

    def goto_stage(self, index: int, reason: str = "moved on by the goal state") -> RolloutEvent:
        """Enter stage ``index`` now (``ACTIVE`` only, forward only), recording a ``STAGE`` event:
        a replica following a goal that an operator or another replica moved on."""
        st = self.state
        if st.phase is not Phase.ACTIVE:
            raise RuntimeError(f"cannot change the stage of a rollout that is {st.phase.value}")
        if not st.stage < index < len(st.plan.stages):
            raise ValueError(f"stage {index} is not ahead of stage {st.stage} in a plan of "
                             f"{len(st.plan.stages)} stages")
        now = self.clock.now_ns()
        ev = self._event(EventKind.STAGE, reason, self.window.figures(), now)
        self._enter(index, now)
        return ev

    def promote(self, reason: str = "promoted by hand") -> RolloutEvent:
        """Make the candidate stable now (from ``DEPLOYED`` or ``ACTIVE``)."""
        if self.state.phase not in (Phase.DEPLOYED, Phase.ACTIVE):
            raise RuntimeError(f"cannot promote a rollout that is {self.state.phase.value}")
        return self._promote(reason, self.window.figures(), self.clock.now_ns())

    def rollback(self, reason: str = "rolled back by hand", figures: dict[str, float] | None = None,
                 ) -> RolloutEvent:
        """Route 0% to the candidate, flag off, record why (from ``DEPLOYED`` or ``ACTIVE``)."""
        if self.state.phase not in (Phase.DEPLOYED, Phase.ACTIVE):
            raise RuntimeError(f"cannot roll back a rollout that is {self.state.phase.value}")
        self.actuator.deactivate()
        self.state.phase = Phase.ROLLED_BACK
        return self._event(EventKind.ROLLED_BACK, reason,
                           self.window.figures() if figures is None else figures, self.clock.now_ns())

    def evaluate(self, now_ns: int | None = None) -> RolloutEvent | None:
        """Judge the guards, roll the window, advance the stage; the event this caused, if any."""
        st = self.state
        if st.phase is not Phase.ACTIVE:
            return None
        now = self.clock.now_ns() if now_ns is None else now_ns
        stage = st.plan.stages[st.stage]
        w = self.window
        if stage.guards is not None:
            why = tripped(stage.guards, w, stage.kind)
            if why is not None:
                return self.rollback(f"guard tripped in stage {st.stage} ({stage.kind.value} "
                                     f"{stage.share:.0%}): {why}", w.figures())
        samples = st.stage_samples + w.n
        if now - st.window_started_ns >= self._window_ns:
            st.stage_samples = samples
            st.window_started_ns = now
            w.reset()
        if now - st.stage_started_ns >= round(stage.min_duration_s * 1e9) and samples >= stage.min_samples:
            if st.stage + 1 >= len(st.plan.stages):
                return None  # the last stage holds until promote() or rollback()
            figures = {**w.figures(), "stage_samples": float(samples), **self.actuator.extra_figures()}
            ev = self._event(EventKind.STAGE, f"stage {st.stage} ({stage.kind.value} {stage.share:.0%}) "
                             f"passed: {samples} samples in {(now - st.stage_started_ns) / 1e9:.1f} s",
                             figures, now)
            self._enter(st.stage + 1, now)
            return ev
        return None
