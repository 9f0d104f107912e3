"""Rollouts in ``tailguard serve``: each worker follows the service's goal in Redis.

``tailguard serve SERVICE --rollout-redis redis://host:port/db`` gives every worker process a
``GoalFollower`` on the goal store (``rollout.goal``) that ``tailguard rollout ...`` writes:
a new goal is noticed by the follower's watch thread, its candidate is loaded on a worker
thread and warmed up in the event loop's side-path slices (``rollout.loading``), and the
goal is applied (deploy and start, move to a stage, promote, roll back).  While a rollout
routes traffic the dispatcher sends every decision through it (``Dispatcher.front``):
routing by the request's entity key (the first key of a batch request), shadow copies and
guards on the side path, automatic rollback written back to the goal so every replica
follows; otherwise decisions go straight to the engine, as without a rollout.

Owner: the event loop thread (a ``SideTask``); the watch and the loader have their own threads.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

from tailguard.rollout.follower import GoalFollower
from tailguard.rollout.goal import GoalStore

if TYPE_CHECKING:
    from tailguard.serve.dispatch import Dispatcher
    from tailguard.service import Service

__all__ = ["ServedRollouts"]


class ServedRollouts:
    """One worker's rollout follower and the dispatcher's front (see the module docstring).
    ``name``: this replica in the goal's records (default ``host:pid``)."""

    def __init__(self, service: Service, dispatcher: Dispatcher, url: str, *, name: str | None = None,
                 poll_s: float = 0.5) -> None:
        self.dispatcher = dispatcher
        self.engine = service.engine
        self.store = GoalStore(url)
        replica = name or f"{socket.gethostname()}:{os.getpid()}"
        self.follower = GoalFollower(service, self.store, name=replica, poll_s=poll_s,
                                     load_in_background=True)

    def _sync(self) -> None:
        r = self.follower.rollout
        self.dispatcher.front = r if r is not None and r.active else self.engine

    def drain(self, budget_ns: int | None = None) -> int:
        """Side path: the follower's drain (goal, loading, the rollout's own work), then point
        the dispatcher at the rollout while it routes traffic, at the engine otherwise."""
        try:
            return self.follower.drain(budget_ns)
        finally:
            self._sync()

    def rollout_summary(self) -> dict[str, Any]:
        """The follower's summary (dashboard, metrics), with what is loading."""
        out = self.follower.rollout_summary()
        loader = self.follower.loader
        loading = None if loader is None else loader.loading
        out["loading"] = None if loading is None else "/".join(loading)
        return out

    def statistics(self) -> dict[str, Any]:
        """The follower's statistics and the local rollout's (when there is one)."""
        r = self.follower.rollout
        return {**self.follower.statistics(), "rollout": None if r is None else r.statistics()}

    def close(self) -> None:
        """Stop following; an active local rollout is rolled back (``GoalFollower.close``)."""
        try:
            self.follower.close()
        finally:
            self.dispatcher.front = self.engine
            self.store.close()
