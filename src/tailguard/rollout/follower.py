"""``GoalFollower``: a replica converging on its service's rollout goal state.

A replica attaches one (``service.attach(follower)``); on the side path its ``drain``:

1. takes the newest goal its ``GoalWatch`` has seen (a reference read, no lock, no I/O) and,
   when it is newer than the applied one (another epoch or a higher revision), applies it to
   the local ``Rollout``:

   * ``ACTIVE`` — deploy the plan's candidate (a new ``Rollout`` for a new ``rollout_id``; the
     previous one is closed), start it, and move it forward to the goal's stage;
   * ``PROMOTED`` — promote (deploying first if this replica never had the rollout; nothing
     to do when the version already serves);
   * ``ROLLED_BACK`` — roll the rollout back with the goal's reason;

   and records the applied revision (``applied``), or why it could not (``last_error``);
2. runs the rollout's own side path (shadow copies, guards, stages);
3. when that rolled the rollout back by itself (a tripped guard), writes the rollback into
   the goal (compare-and-set against the applied revision, done on the watch thread), so
   every replica rolls back.

Callers decide through ``follower.rollout`` while it is not None (``Rollout.predict`` ...);
the follower never touches the reply path itself.  Deploying a candidate loads and warms it on
the owner thread, inside ``drain`` (as ``Rollout`` always does).

Owner: the engine's owner thread (``drain`` / ``close``); the watch runs on its own thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from tailguard.errors import TailguardError
from tailguard.rollout.controller import Phase
from tailguard.rollout.front import Rollout
from tailguard.rollout.goal import Goal, GoalPhase, GoalStore, GoalWatch
from tailguard.rollout.loading import CandidateLoader
from tailguard.rollout.plan import RolloutPlan

if TYPE_CHECKING:
    from tailguard.service import Service

__all__ = ["GoalFollower"]


class _Pending(Exception):
    """The goal's candidate is not ready yet (background load or warm-up under way)."""


class GoalFollower:
    """Keeps ``service``'s local rollout on the goal in ``store`` (see the module docstring).

    ``make_rollout(plan)`` deploys a plan (default ``Rollout(service, plan)``, which loads and
    warms the candidate inside one ``drain``); ``load_in_background=True`` instead loads it on a
    worker thread and warms it up within the budgets of later drains (``CandidateLoader``), the
    goal being applied once it is ready — what a server wants; ``name``: this replica in the
    reasons it writes back; ``poll_s``: the watch's re-read period, the bound on catching up
    when a change notice is lost."""

    def __init__(self, service: Service, store: GoalStore, *, name: str = "replica",
                 make_rollout: Callable[[RolloutPlan], Rollout] | None = None, poll_s: float = 0.5,
                 load_in_background: bool = False) -> None:
        self.service = service
        self.store = store
        self.name = name
        self.service_name = service.spec.name
        self._make = make_rollout if make_rollout is not None else (lambda plan: Rollout(service, plan))
        self.rollout: Rollout | None = None
        self.rollout_id: str | None = None
        self.applied: Goal | None = None
        self.last_error: str | None = None
        self.written_back = 0
        self.watch: GoalWatch = store.watch(self.service_name, poll_s=poll_s)
        self.loader = CandidateLoader(service) if load_in_background and make_rollout is None else None
        self._end_ns: int | None = None

    @property
    def applied_revision(self) -> tuple[str, int] | None:
        """(epoch, revision) of the goal applied last (None before the first)."""
        g = self.applied
        return None if g is None else (g.epoch, g.revision)

    # -- applying a goal (owner thread) ----------------------------------------------------------------
    def _deploy(self, goal: Goal) -> Rollout:
        if self.rollout is not None and self.rollout_id == goal.rollout_id:
            return self.rollout
        if self.rollout is not None:
            self.rollout.close()  # an active one is rolled back ("rollout closed")
        self.rollout, self.rollout_id = None, None
        if self.loader is not None:
            candidate = self.loader.get(goal.plan, self._end_ns)
            if candidate is None:
                raise _Pending
            rollout = Rollout(self.service, goal.plan, candidate=candidate)
        else:
            rollout = self._make(goal.plan)
        self.rollout, self.rollout_id = rollout, goal.rollout_id
        return rollout

    def _apply(self, goal: Goal) -> None:
        plan = goal.plan
        if goal.phase is GoalPhase.ACTIVE:
            r = self._deploy(goal)
            if r.state.phase is Phase.DEPLOYED:
                r.start()
            if r.active and r.state.stage < goal.stage < len(plan.stages):
                r.controller.goto_stage(goal.stage, f"goal revision {goal.revision}: stage {goal.stage} "
                                        f"(by {goal.by or 'unknown'})")
        elif goal.phase is GoalPhase.PROMOTED:
            serving = self.service.models.get(plan.model)
            if self.rollout_id != goal.rollout_id and serving is not None and serving.version == plan.version:
                return  # already serves the promoted version (e.g. restarted after the promotion)
            r = self._deploy(goal)
            if r.state.phase in (Phase.DEPLOYED, Phase.ACTIVE):
                r.promote(f"goal revision {goal.revision}: {goal.reason or 'promoted'} "
                          f"(by {goal.by or 'unknown'})")
        else:
            r2 = self.rollout if self.rollout_id == goal.rollout_id else None
            if r2 is not None and r2.state.phase in (Phase.DEPLOYED, Phase.ACTIVE):
                r2.rollback(f"goal revision {goal.revision}: {goal.reason or 'rolled back'} "
                            f"(by {goal.by or 'unknown'})")

    def poll(self) -> bool:
        """Apply the newest goal seen if it is newer than the applied one; whether one was."""
        goal = self.watch.latest
        if goal is None or not goal.newer_than(self.applied):
            return False
        self.last_error = None
        try:
            self._apply(goal)
        except _Pending:
            return False  # the candidate is still loading or warming up: apply on a later drain
        except (TailguardError, RuntimeError, ValueError) as exc:
            # A goal this replica cannot follow (a version it lacks...) is recorded, not retried.
            code = getattr(exc, "code", type(exc).__name__)
            self.last_error = f"[{code}] {exc}"
        self.applied = goal
        return True

    # -- side path -------------------------------------------------------------------------------------
    def drain(self, budget_ns: int | None = None) -> int:
        """Side path: apply a newer goal, run the rollout's own side path, write an automatic
        rollback back into the goal; the number of items done."""
        self._end_ns = None if budget_ns is None else time.perf_counter_ns() + budget_ns
        n = 1 if self.poll() else 0
        r = self.rollout
        if r is None:
            return n
        was_active = r.active
        n += r.drain(budget_ns)
        goal = self.applied
        if (was_active and r.state.phase is Phase.ROLLED_BACK and goal is not None
                and goal.rollout_id == self.rollout_id and goal.phase is GoalPhase.ACTIVE):
            reason = r.events[-1].reason if r.events else "rolled back"
            self.watch.submit(msgspec.structs.replace(goal, phase=GoalPhase.ROLLED_BACK, by=self.name,
                                                      reason=f"automatic rollback on {self.name}: {reason}",
                                                      wall_ns=0), goal.revision)
            self.written_back += 1
        return n

    def statistics(self) -> dict[str, Any]:
        """Applied (epoch, revision) and phase, the local rollout's phase, the last error, the
        watch's connection state and error count, rollbacks written back."""
        g = self.applied
        return {
            "revision": None if g is None else g.revision, "epoch": None if g is None else g.epoch,
            "goal_phase": None if g is None else g.phase.value,
            "rollout_phase": None if self.rollout is None else self.rollout.state.phase.value,
            "last_error": self.last_error, "connected": self.watch.connected,
            "watch_errors": self.watch.errors, "written_back": self.written_back,
        }

    def rollout_summary(self) -> dict[str, Any]:
        """The local rollout's ``rollout_summary`` (an empty one before the first goal) with the
        goal's revision and phase, the watch's connection state and the last error."""
        r = self.rollout
        g = self.applied
        out: dict[str, Any] = {} if r is None else r.rollout_summary()
        out.update(goal_revision=None if g is None else g.revision,
                   goal_phase=None if g is None else g.phase.value, connected=self.watch.connected,
                   last_error=self.last_error)
        return out

    def close(self) -> None:
        """Stop the watch; the local rollout is closed (an active one rolled back) as
        ``Rollout.close`` does."""
        self.watch.close()
        if self.loader is not None:
            self.loader.close()
        if self.rollout is not None:
            self.rollout.close()
