"""``CandidateLoader``: a rollout's candidate loaded off the owner thread, warmed up in its slices.

Deploying a candidate means reading and verifying the version (hashes, signature policy,
feature versions), building its runtime and running its warm-up.  In a server the owner
thread is the event loop: doing all of that inside one side-path call would stall every
request behind it for milliseconds.  The loader splits it as the in-process hot swap does
(``registry.swap``): ``prepare_swap`` runs on a worker thread (file reads, hashing and
``dlopen`` release the GIL), and the warm-up inferences run one by one from ``get`` — that
is, from the owner's side-path slices — the first of each call always, the next ones only
while their expected time fits the slice.

``get(plan, end_ns)`` returns the warmed-up ``LoadedModel`` once it is ready and None until
then (call it again on the next slice); a refusal (corrupted artifact, signature, feature
versions) is raised from ``get`` on the owner thread, once.

Owner: the engine's owner thread (``get``, ``close``); the worker thread only prepares.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from tailguard.models.repository import LoadedModel
from tailguard.rollout.plan import RolloutPlan

if TYPE_CHECKING:
    from tailguard.registry.swap import PreparedSwap
    from tailguard.service import Service

__all__ = ["CandidateLoader"]


class CandidateLoader:
    """Loads one plan's candidate at a time for ``service`` (see the module docstring)."""

    def __init__(self, service: Service, *, warmup: int | None = None) -> None:
        self.service = service
        self.warmup = warmup
        self._key: tuple[str, str] | None = None
        self._prepared: PreparedSwap | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self.loads = 0
        self.warm_steps = 0

    def _prepare(self, plan: RolloutPlan, done: threading.Event) -> None:
        from tailguard.registry.swap import prepare_swap

        try:
            self._prepared = prepare_swap(self.service, plan.model, plan.version, warmup=self.warmup)
        except BaseException as exc:  # handed to the owner thread, raised from get()
            self._error = exc
        finally:
            done.set()

    @property
    def loading(self) -> tuple[str, str] | None:
        """(model, version) being loaded or warmed up; None when idle."""
        return self._key

    def get(self, plan: RolloutPlan, end_ns: int | None = None) -> LoadedModel | None:
        """The candidate of ``plan``, loaded and warmed up, or None while that is under way.
        ``end_ns`` (``time.perf_counter_ns``): run warm-up steps only while their expected
        time ends before it (None: all now).  Raises the load's refusal, once."""
        key = (plan.model, plan.version)
        if key != self._key:
            self._key, self._prepared, self._error = key, None, None
            self._done = threading.Event()
            self.loads += 1
            threading.Thread(target=self._prepare, args=(plan, self._done), daemon=True,
                             name=f"tailguard-load-{plan.model}-{plan.version}").start()
            return None
        if not self._done.is_set():
            return None
        if self._error is not None:
            exc, self._key, self._error = self._error, None, None
            raise exc
        prepared = self._prepared
        assert prepared is not None
        warm = prepared.warm
        clock = time.perf_counter_ns
        first = True
        while not warm.done():
            # At least one step per call, so an inference longer than any slice still runs.
            if not first and end_ns is not None and clock() + warm.next_cost_ns() > end_ns:
                return None
            warm.step()
            self.warm_steps += 1
            first = False
        self._key, self._prepared = None, None
        return prepared.model

    def close(self) -> None:
        """Forget a load in progress (its thread finishes on its own; the result is dropped)."""
        self._key, self._prepared, self._error = None, None, None
