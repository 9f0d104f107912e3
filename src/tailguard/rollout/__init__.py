"""Rollout: a candidate model version next to the stable one, in process, under guards.

* ``rollout.plan``: the declarative plan (stages shadow -> canary/A-B -> promote, each with
  guards and minimum duration/samples) and its validation (``PlanError``);
* ``rollout.router``: sticky routing by a stable hash of the routing key;
* ``rollout.shadow``: copies of served feature rows run by the other version off the reply
  path (bounded, droppable), outputs compared and summarised;
* ``rollout.ab``: A/B exposure records;
* ``rollout.stats``: the A/B test, an mSPRT with an always-valid p-value;
* ``rollout.window`` and ``rollout.controller``: guards judged on a window, automatic
  rollback with the reason recorded, promotion, the serialisable ``RolloutState``;
* ``rollout.front``: ``Rollout``, the object callers decide through during a rollout;
* ``rollout.goal`` and ``rollout.follower``: the goal state in Redis (compare-and-set, change
  notices, polling) and ``GoalFollower``, which keeps a replica's rollout on it;
* ``rollout.commands``: ``tailguard rollout status|shadow|canary|ab|promote|rollback``.

See docs/rollout.md.
"""

from __future__ import annotations

from tailguard.rollout.ab import Exposure
from tailguard.rollout.controller import EventKind, Phase, RolloutEvent, RolloutState
from tailguard.rollout.follower import GoalFollower
from tailguard.rollout.front import Rollout
from tailguard.rollout.goal import Goal, GoalConflict, GoalPhase, GoalRefused, GoalStore, GoalStoreUnavailable
from tailguard.rollout.plan import Guards, PlanError, RolloutPlan, Stage, StageKind, parse_plan
from tailguard.rollout.stats import MSPRT

__all__ = [
    "MSPRT",
    "EventKind",
    "Exposure",
    "Goal",
    "GoalConflict",
    "GoalFollower",
    "GoalPhase",
    "GoalRefused",
    "GoalStore",
    "GoalStoreUnavailable",
    "Guards",
    "Phase",
    "PlanError",
    "Rollout",
    "RolloutEvent",
    "RolloutPlan",
    "RolloutState",
    "Stage",
    "StageKind",
    "parse_plan",
]
