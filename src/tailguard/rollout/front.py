"""``Rollout``: the front of a service during a rollout — routing, shadow, A/B, guards.

**Deployment is separate from activation.**  ``Rollout(service, plan)`` *deploys*: it checks
the plan (``PlanError``, nothing changed, when it is invalid), loads and verifies the
candidate version with the registry (``registry.swap.prepare_swap``: hashes, signature
policy, feature versions), runs its warm-up, and builds a second engine over the same store
and feature assembler whose ladder has the candidate in the model's rungs
(``resilience.ladder.swapped_ladder``).  No request sees it yet.  ``start()`` *activates*:
the controller enters the plan's first stage.

Callers decide through the rollout instead of the engine: ``rollout.predict`` and
``rollout.predict_batch`` take the engine's arguments and route by the entity key (a batch by
its first key); ``predict_routed`` / ``predict_batch_routed`` take an explicit routing key
first (a client, session or user id).  While no stage routes traffic (deployed, promoted,
rolled back) ``predict`` and ``predict_batch`` *are* the stable engine's bound methods, so the
reply path costs exactly what it costs without a rollout.  In a stage:

* **shadow** — the stable engine answers; for the ``share`` of routing keys the stable
  answers a copy of the feature rows goes to a bounded, droppable queue (``shadow.Mirror``)
  and the candidate runs on it on the side path; outputs are compared and summarised;
* **canary** — routing keys whose stable hash falls in ``share`` (``router.Router``: sticky per
  key, a key in at 5% stays in at 25%) are answered by the candidate engine; with a divergence
  guard the stable model re-scores copies of those rows on the side path;
* **A/B** — as canary, plus an exposure record per request (key, arm, model version, time;
  the last ``exposure_capacity`` kept) and ``record_outcome`` feeding an mSPRT
  (``stats.MSPRT``) whose always-valid p-value may be read at any time.

The rollout is a ``SideTask``: attach it (``service.attach(rollout)``) and
``Service.run_side_path`` runs its shadow/comparison work and its controller, which rolls back
on a tripped guard and promotes (``Engine.replace_model`` on every rung of the model) at the
plan's end.  Candidate decisions reach the service's latency recorder and its decision tap
(audit log, drift: the candidate engine's own rows, through ``DecisionTap.feed``); other
hooks are left out (see docs/rollout.md).

Owner: the engine's owner thread for everything but the constructor's loading.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from tailguard.decision import BatchDecision, Decision
from tailguard.engine import Engine
from tailguard.errors import BudgetExhausted
from tailguard.models.repository import LoadedModel
from tailguard.resilience.isolation import IsolatedRuntime
from tailguard.resilience.ladder import swapped_ladder
from tailguard.rollout.ab import Exposure, ExposureLog
from tailguard.rollout.controller import Controller, Phase, RolloutEvent, RolloutState
from tailguard.rollout.plan import PlanError, RolloutPlan, Stage, StageKind, validate_plan
from tailguard.rollout.router import Router, first_key
from tailguard.rollout.shadow import Mirror, MirrorSummary
from tailguard.rollout.stats import MSPRT, MsprtResult
from tailguard.rollout.window import GuardWindow

if TYPE_CHECKING:
    from tailguard.service import Service

__all__ = ["Rollout"]


class Rollout:
    """Deploys ``plan``'s candidate next to ``service``'s stable version; see the module docstring.

    ``candidate``: an already loaded (and warmed-up) ``LoadedModel`` of the plan's model and
    version, instead of loading it here; ``warmup``: the warm-up count (default the spec's);
    ``mirror_capacity``: copies waiting for the side path before new ones are dropped."""

    def __init__(self, service: Service, plan: RolloutPlan, *, candidate: LoadedModel | None = None,
                 warmup: int | None = None, mirror_capacity: int = 1024, exposure_capacity: int = 65536,
                 window_capacity: int = 4096) -> None:
        validate_plan(plan, service)
        if candidate is None:
            from tailguard.registry.swap import prepare_swap

            prepared = prepare_swap(service, plan.model, plan.version, warmup=warmup)
            prepared.warm.run_all()
            candidate = prepared.model
        elif (candidate.name, candidate.version) != (plan.model, plan.version):
            raise PlanError(f"the candidate given is {candidate.label}, the plan rolls out "
                            f"{plan.model}/{plan.version}")
        eng = service.engine
        self.service = service
        self.plan = plan
        self.candidate = candidate
        self.stable_engine = eng
        self.rung_names = tuple(r.name for r in eng.rungs
                                if r.model is not None and r.model.name == plan.model)
        rungs = eng.rungs
        for name in self.rung_names:
            rungs, _, _ = swapped_ladder(rungs, name, candidate, eng.assembler.columns, eng.output_names)
        self.rung_index = min(r.index for r in eng.rungs if r.name in self.rung_names)
        self.stable_model = eng.rungs[self.rung_index].model
        self.candidate_engine = Engine(
            store=eng.store, assembler=eng.assembler, rungs=rungs, output_names=eng.output_names,
            priorities=service.spec.priorities, default_priority=service.spec.default_priority,
            clock=eng.clock, remote=eng.remote,
        )
        # The latency recorder sees candidate decisions as they are; the shared decision tap (audit
        # log, drift) and a side process's ring through feeds that copy the candidate engine's own
        # rows.  Other hooks (copying from the stable engine's buffers) would record the wrong
        # rows: left out.
        hooks: list[Any] = [h for h in eng.hooks if h is service.latency]
        if service.tap is not None:
            hooks.append(service.tap.feed(self.candidate_engine))
        if service.ring is not None:  # a side process's ring (tailguard.observe.ring), the same way
            hooks.append(service.ring.feed(self.candidate_engine))
        self.candidate_engine.set_hooks(hooks)
        self.clock = eng.clock
        self.window = GuardWindow(self.rung_index, window_capacity)
        self.controller = Controller(RolloutState(plan=plan), self, self.window, eng.clock)
        self._mirror_capacity = mirror_capacity
        self.mirror: Mirror | None = None
        self._router: Router | None = None
        self.exposures = ExposureLog(exposure_capacity)
        self.test: MSPRT | None = None
        self.requests = 0
        self.candidate_requests = 0
        self._route_to_stable()

    # -- flag and stages (owner thread) ------------------------------------------------------------
    def _route_to_stable(self) -> None:
        # No stage routes: the stable engine's own bound methods, no per-request cost.
        self.predict: Any = self.stable_engine.predict
        self.predict_batch: Any = self.stable_engine.predict_batch
        self._routed: Any = None
        self._routed_batch: Any = None
        self._router = None
        if self.mirror is not None:
            self.mirror.clear()

    @property
    def active(self) -> bool:
        """Whether the rollout's flag is on (a stage routes traffic or copies to the candidate)."""
        return self.controller.state.phase is Phase.ACTIVE

    @property
    def state(self) -> RolloutState:
        """The controller's serialisable state."""
        return self.controller.state

    @property
    def events(self) -> list[RolloutEvent]:
        """Every transition so far (started, stage passed, promoted, rolled back and why)."""
        return self.controller.state.events

    def start(self) -> RolloutEvent:
        """Activate: turn the flag on and enter the plan's first stage."""
        return self.controller.start()

    def promote(self, reason: str = "promoted by hand") -> RolloutEvent:
        """Make the candidate the stable version now."""
        return self.controller.promote(reason)

    def rollback(self, reason: str = "rolled back by hand") -> RolloutEvent:
        """Route 0% to the candidate and turn the flag off now, recording ``reason``."""
        return self.controller.rollback(reason)

    def evaluate(self) -> RolloutEvent | None:
        """Run the controller once (guards, window, stage); the event it caused, if any."""
        return self.controller.evaluate()

    def apply_stage(self, stage: Stage) -> None:
        """``Actuator``: route as ``stage`` says (called by the controller)."""
        guards = stage.guards
        tolerance = guards.divergence_tolerance if guards is not None else 0.05
        self._router = Router(stage.share, self.plan.salt)
        self.mirror = None
        cols = self.stable_engine.assembler.columns
        if stage.kind is StageKind.SHADOW:
            self.mirror = Mirror(self.candidate, cols, self.window, served_rung=self.rung_index,
                                 times_other=True, tolerance=tolerance, now_ns=self.clock.now_ns,
                                 capacity=self._mirror_capacity)
            self.predict, self.predict_batch = self._predict_shadow, self._predict_batch_shadow
            self._routed, self._routed_batch = self.predict, self.predict_batch
            return
        if guards is not None and guards.max_divergence is not None and self.stable_model is not None:
            self.mirror = Mirror(self.stable_model, cols, self.window, served_rung=self.rung_index,
                                 times_other=False, tolerance=tolerance, now_ns=self.clock.now_ns,
                                 capacity=self._mirror_capacity)
        if stage.kind is StageKind.AB:
            if self.test is None:
                self.test = MSPRT(self.plan.ab_metric_alpha)
            self.predict, self.predict_batch = self._predict_ab, self._predict_batch_canary
        else:
            self.predict, self.predict_batch = self._predict_canary, self._predict_batch_canary
        self._routed, self._routed_batch = self.predict, self.predict_batch

    def switch_to_candidate(self) -> None:
        """``Actuator``: every rung of the model serves the candidate on the stable engine
        (``Engine.replace_model``, all rungs or none); routing stops."""
        eng = self.stable_engine
        replaced: list[tuple[str, Any]] = []
        try:
            for name in self.rung_names:
                replaced.append((name, eng.replace_model(name, self.candidate)))
        except BaseException:
            for name, old in reversed(replaced):
                eng.replace_model(name, old)
            raise
        self.service.models[self.plan.model] = self.candidate
        self._route_to_stable()
        old_rt = replaced[0][1].runtime if replaced else None
        if isinstance(old_rt, IsolatedRuntime) and old_rt is not self.candidate.runtime:
            old_rt.close()  # the replaced version's worker thread (as registry.swap does)

    def deactivate(self) -> None:
        """``Actuator``: route 0% to the candidate, flag off, release the candidate's thread."""
        self._route_to_stable()
        rt = self.candidate.runtime
        if isinstance(rt, IsolatedRuntime):
            rt.close()

    def extra_figures(self) -> dict[str, float]:
        """``Actuator``: the A/B test's figures when one runs."""
        if self.test is None:
            return {}
        r = self.test.result()
        return {"ab_p_value": r.p_value, "ab_diff": r.diff, "ab_n_a": float(r.n_a), "ab_n_b": float(r.n_b)}

    # -- reply path ------------------------------------------------------------------------------------
    def predict_routed(self, route_key: Any, keys: Any, context: Mapping[str, Any] | None = None,
                       **kwargs: Any) -> Decision:
        """``predict`` routed by ``route_key`` (a client, session or user id) instead of the entity
        key; ``kwargs`` are the engine's (priority, budget_s, deadline_ns, start_rung).  With no
        stage routing it is one extra call in front of the stable engine."""
        f = self._routed
        if f is None:
            return self.stable_engine.predict(keys, context, **kwargs)
        d: Decision = f(keys, context, route_key=route_key, **kwargs)
        return d

    def predict_batch_routed(self, route_key: Any, keys: Any, context: Mapping[str, Any] | None = None,
                             **kwargs: Any) -> BatchDecision:
        """``predict_batch`` routed as one unit by ``route_key`` (e.g. the user of a recommender
        request); see ``predict_routed``."""
        f = self._routed_batch
        if f is None:
            return self.stable_engine.predict_batch(keys, context, **kwargs)
        b: BatchDecision = f(keys, context, route_key=route_key, **kwargs)
        return b

    def _predict_shadow(self, keys: Any, context: Mapping[str, Any] | None = None, *,
                        priority: str | None = None, budget_s: float | None = None,
                        deadline_ns: int | None = None, start_rung: int = 0,
                        route_key: Any = None) -> Decision:
        eng = self.stable_engine
        d = eng.predict(keys, context, priority=priority, budget_s=budget_s, deadline_ns=deadline_ns,
                        start_rung=start_rung)
        self.requests += 1
        router, mirror = self._router, self.mirror
        if router is not None and mirror is not None and router.to_candidate(
                keys if route_key is None else route_key):
            mirror.offer(eng.last_features(1), d.outputs, d.rung_index)
        return d

    def _predict_batch_shadow(self, keys: Any, context: Mapping[str, Any] | None = None, *,
                              priority: str | None = None, budget_s: float | None = None,
                              deadline_ns: int | None = None, start_rung: int = 0,
                              route_key: Any = None) -> BatchDecision:
        eng = self.stable_engine
        b = eng.predict_batch(keys, context, priority=priority, budget_s=budget_s, deadline_ns=deadline_ns,
                              start_rung=start_rung)
        self.requests += 1
        router, mirror = self._router, self.mirror
        if router is not None and mirror is not None and router.to_candidate(
                first_key(keys) if route_key is None else route_key):
            mirror.offer_batch(eng.last_features(len(b)), b.outputs, b.rungs)
        return b

    def _predict_canary(self, keys: Any, context: Mapping[str, Any] | None = None, *,
                        priority: str | None = None, budget_s: float | None = None,
                        deadline_ns: int | None = None, start_rung: int = 0,
                        route_key: Any = None) -> Decision:
        self.requests += 1
        router = self._router
        if router is None or not router.to_candidate(keys if route_key is None else route_key):
            return self.stable_engine.predict(keys, context, priority=priority, budget_s=budget_s,
                                              deadline_ns=deadline_ns, start_rung=start_rung)
        self.candidate_requests += 1
        cand = self.candidate_engine
        try:
            d = cand.predict(keys, context, priority=priority, budget_s=budget_s, deadline_ns=deadline_ns,
                             start_rung=start_rung)
        except BudgetExhausted:
            self.window.record_error()
            raise
        self.window.record(d.flags, d.rung_index, d.timings_ns[4])
        mirror = self.mirror
        if mirror is not None:
            mirror.offer(cand.last_features(1), d.outputs, d.rung_index)
        return d

    def _predict_ab(self, keys: Any, context: Mapping[str, Any] | None = None, *,
                    priority: str | None = None, budget_s: float | None = None,
                    deadline_ns: int | None = None, start_rung: int = 0, route_key: Any = None) -> Decision:
        rk = keys if route_key is None else route_key
        n0 = self.candidate_requests
        d: Decision = self._predict_canary(keys, context, priority=priority, budget_s=budget_s,
                                           deadline_ns=deadline_ns, start_rung=start_rung, route_key=rk)
        self.exposures.append(rk, "B" if self.candidate_requests != n0 else "A", d.model_version,
                              self.clock.now_ns())
        return d

    def _predict_batch_canary(self, keys: Any, context: Mapping[str, Any] | None = None, *,
                              priority: str | None = None, budget_s: float | None = None,
                              deadline_ns: int | None = None, start_rung: int = 0,
                              route_key: Any = None) -> BatchDecision:
        self.requests += 1
        router = self._router
        rk = first_key(keys) if route_key is None else route_key
        if router is None or not router.to_candidate(rk):
            b = self.stable_engine.predict_batch(keys, context, priority=priority, budget_s=budget_s,
                                                 deadline_ns=deadline_ns, start_rung=start_rung)
            arm = "A"
        else:
            self.candidate_requests += 1
            cand = self.candidate_engine
            try:
                b = cand.predict_batch(keys, context, priority=priority, budget_s=budget_s,
                                       deadline_ns=deadline_ns, start_rung=start_rung)
            except BudgetExhausted:
                self.window.record_error()
                raise
            own = b.rungs == self.rung_index
            self.window.record(int(np.bitwise_or.reduce(b.flags)), self.rung_index if own.all() else -1,
                               b.timings_ns[4])
            if self.mirror is not None:
                self.mirror.offer_batch(cand.last_features(len(b)), b.outputs, b.rungs)
            arm = "B"
        if self.test is not None and self.active and self.controller.stage.kind is StageKind.AB:
            self.exposures.append(rk, arm, b.model_version, self.clock.now_ns())
        return b

    # -- A/B ---------------------------------------------------------------------------------------------
    def arm_of(self, route_key: Any) -> str:
        """The A/B arm of a routing key: ``"B"`` (candidate) or ``"A"`` (stable)."""
        router = self._router
        return "B" if router is not None and router.to_candidate(route_key) else "A"

    def record_outcome(self, route_key: Any, value: float) -> bool:
        """Feed one outcome (the metric the A/B test compares) for ``route_key``'s arm; returns
        whether the test has rejected equal means.  Ignored outside an A/B stage."""
        if self.test is None or self._router is None:
            return False
        return self.test.add(self.arm_of(route_key), float(value))

    def ab_result(self) -> MsprtResult | None:
        """The A/B test's current result (None before an A/B stage)."""
        return None if self.test is None else self.test.result()

    @property
    def exposures_total(self) -> int:
        """Exposures recorded so far (kept or not)."""
        return self.exposures.total

    def exposure_records(self) -> list[Exposure]:
        """The kept exposure records, oldest first (the last ``exposure_capacity``)."""
        return self.exposures.records()

    # -- side path (SideTask) --------------------------------------------------------------------------
    def drain(self, budget_ns: int | None = None) -> int:
        """Side path: probes of the candidate engine's skipped models, queued shadow/comparison
        copies for about ``budget_ns`` of real time (None: all), then the controller; returns the
        items done plus 1 if the controller changed something."""
        if self.controller.state.phase is not Phase.ACTIVE:
            return 0
        end = None if budget_ns is None else time.perf_counter_ns() + budget_ns
        n = self.candidate_engine.run_side_path(None if end is None else end - time.perf_counter_ns())
        if self.mirror is not None:
            n += self.mirror.drain(None if end is None else max(end - time.perf_counter_ns(), 0),
                                   time.perf_counter_ns)
        if self.controller.evaluate() is not None:
            n += 1
        return n

    def close(self) -> None:
        """End the rollout: an active one is rolled back ("rollout closed"); the candidate's
        isolated worker thread, if any, stops unless it was promoted."""
        if self.controller.state.phase is Phase.ACTIVE:
            self.controller.rollback("rollout closed")
        elif self.controller.state.phase is not Phase.PROMOTED:
            self.deactivate()

    def mirror_summary(self) -> MirrorSummary | None:
        """The current stage's shadow/comparison summary (None without a mirror)."""
        return None if self.mirror is None else self.mirror.summary()

    def rollout_summary(self) -> dict[str, Any]:
        """A small JSON-able summary for dashboards and metrics (any thread; plain reads):
        model, candidate and stable versions, phase, stage index, kind and share, requests
        while active and those the candidate answered, the A/B p-value and the last five
        events (kind, stage, reason, wall-clock seconds)."""
        st = self.controller.state
        stage = st.plan.stages[st.stage] if st.stage < len(st.plan.stages) else None
        stable = self.stable_model
        ab = self.test
        return {
            "model": self.plan.model, "candidate": self.plan.version,
            "stable": "" if stable is None else stable.version, "phase": st.phase.value,
            "stage": st.stage, "stage_kind": "" if stage is None else stage.kind.value,
            "share": 0.0 if stage is None else stage.share,
            "requests": self.requests, "candidate_requests": self.candidate_requests,
            "ab_p_value": None if ab is None else ab.result().p_value,
            "events": [{"kind": e.kind.value, "stage": e.stage, "reason": e.reason, "wall_s": e.wall_ns / 1e9}
                       for e in st.events[-5:]],
        }

    def statistics(self) -> dict[str, Any]:
        """Phase, stage, requests seen while active, candidate requests, the window's figures,
        the mirror summary, exposures and the A/B result."""
        st = self.controller.state
        ab = self.ab_result()
        ms = self.mirror_summary()
        return {
            "model": self.plan.model, "version": self.plan.version, "phase": st.phase.value,
            "stage": st.stage, "requests": self.requests, "candidate_requests": self.candidate_requests,
            "window": self.window.figures(),
            "mirror": None if ms is None else msgspec.structs.asdict(ms),
            "exposures_total": self.exposures_total,
            "ab": None if ab is None else msgspec.structs.asdict(ab),
        }
