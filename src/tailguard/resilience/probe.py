"""Probes: re-measure a skipped model off the reply path so its estimate can recover.

A model skipped for budget gets no new timings, so a false alarm (a burst of preemptions, a
cold cache right after load) or a slowness that has passed would keep it off the ladder for
good.  When a skipped model has not been observed for ``interval_ns``, the engine asks for a
probe with a copy of the current input.  A probe is one timed run:

* **owner**: ``run_pending``, which the owner calls in idle time with a time budget
  (``Service.run_side_path``), runs it on the owner thread;
* **background** (opt-in, ``Engine(background_probes=True)``): when the runtime can
  ``clone()`` itself (a second instance with its own buffers, sharing the compiled code or
  the ONNX session), a daemon thread also runs it, so an embedder that never calls
  ``run_side_path`` still recovers.  The timing is handed back through a deque and folded
  in by the owner at its next model call, so the estimate keeps a single writer.  It is off
  by default because of what was measured here: while a background probe waits for the
  GIL, a busy owner thread can starve it for seconds *and* pay ~10 us more per decision
  (GIL hand-off churn); idle-time owner probes have neither problem.

Whichever runs first recovers the estimate.  A background timing includes the worker's
waits for the GIL and a core, so it may only prove a model fast (re-seed), never slow.

A probe that shows the model well under its estimate (by the spike factor) re-seeds the
estimate — recovery in one probe; otherwise an owner probe's sample is folded in as usual
(background timings: see below).
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Sequence

import numpy as np

from tailguard.models.runtime import Runtime, ServiceTime
from tailguard.resilience.ladder import Rung

__all__ = ["Prober", "fold_probe"]


def fold_probe(st: ServiceTime, n: int, elapsed_ns: int) -> None:
    """Fold one probe timing into an estimate: re-seed when clearly faster, else observe."""
    if elapsed_ns * st.spike_factor < st.expected_ns(n):
        st.reseed(n, elapsed_ns)
    else:
        st.observe(n, elapsed_ns)


class Prober:
    """Probe requests, background worker and owner-run queue for one engine's rungs."""

    def __init__(
        self,
        rungs: Sequence[Rung],
        now_ns: Callable[[], int],
        interval_ns: int,
        *,
        background: bool = True,
        overdue_ns: int = 250_000_000,
    ) -> None:
        self._rungs = tuple(rungs)
        self._now = now_ns
        self.interval_ns = interval_ns
        self._last_request = [0] * len(self._rungs)
        self.pending: dict[int, np.ndarray] = {}  # owner-run probes
        self._pending_since: dict[int, int] = {}
        self.overdue_ns = overdue_ns
        self._background = background
        # Clones are made on first use, per runtime object (a swapped runtime is re-cloned).
        self._clones: dict[int, tuple[Runtime, Runtime]] = {}
        self._in_flight: set[int] = set()
        self._queue: queue.SimpleQueue[tuple[int, np.ndarray] | None] = queue.SimpleQueue()
        #: (rung index, batch size, elapsed ns), appended by the worker, folded by the owner.
        self.results: collections.deque[tuple[int, int, int]] = collections.deque()
        self._thread: threading.Thread | None = None
        self.background_runs = 0
        self.owner_runs = 0

    def replace_rungs(self, rungs: Sequence[Rung], changed: int) -> None:
        """Use ``rungs`` from now on (rung ``changed`` was swapped): a probe queued for the old
        model of that rung is dropped (it would run the new model on the old one's input)."""
        self._rungs = tuple(rungs)
        self.pending.pop(changed, None)
        self._pending_since.pop(changed, None)

    def request(self, rung: Rung, x: np.ndarray, last_observed_ns: int) -> None:
        """Owner thread, on a skip: queue a probe with a copy of ``x`` if one is due."""
        i = rung.index
        now = self._now()
        if now - max(last_observed_ns, self._last_request[i]) < self.interval_ns:
            return
        self._last_request[i] = now
        # Always offered to the owner's idle time; also to the background worker when the
        # runtime can clone itself and no probe of this rung is in flight there.  Whichever
        # runs first recovers the estimate.
        self.pending[i] = x.copy()
        self._pending_since.setdefault(i, now)
        if i not in self._in_flight and self._clone(rung) is not None:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="tailguard-probe", daemon=True)
                self._thread.start()
            self._in_flight.add(i)
            self._queue.put((i, x.copy()))

    def _clone(self, rung: Rung) -> Runtime | None:
        if not self._background or rung.model is None:
            return None
        runtime = rung.model.runtime
        cached = self._clones.get(rung.index)
        if cached is not None and cached[0] is runtime:
            return cached[1]
        make = getattr(runtime, "clone", None)
        if make is None:
            return None
        clone: Runtime = make()
        self._clones[rung.index] = (runtime, clone)
        return clone

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            i, x = item
            t0 = self._now()
            try:
                self._clones[i][1].run(x)
            except Exception:
                self.results.append((i, x.shape[0], -1))
                continue
            self.results.append((i, x.shape[0], self._now() - t0))

    def fold_results(self, last_observed: list[int], failed: list[int]) -> None:
        """Owner thread: fold the background probes' timings into the estimates."""
        while self.results:
            i, n, elapsed = self.results.popleft()
            self._in_flight.discard(i)
            model = self._rungs[i].model
            assert model is not None
            if elapsed < 0:
                failed[i] += 1
                continue
            # Another thread's timing includes waits for the GIL and a core, so it can only
            # prove the model fast (re-seed), never slow: a slow one is dropped.
            st = model.service_time
            if elapsed * st.spike_factor < st.expected_ns(n):
                st.reseed(n, elapsed)
                last_observed[i] = self._now()
            self.background_runs += 1

    def run_pending(self, budget_ns: int | None, last_observed: list[int], failed: list[int]) -> int:
        """Owner thread, idle time: run owner probes whose model's mean time fits the budget.

        A probe pending for ``overdue_ns`` (0.25 s) runs even if it does not fit: a model whose
        slow estimate never fits an idle gap would otherwise never be re-measured.  That
        delays at most one request per ``overdue_ns`` by one run of the model."""
        if not self.pending:
            return 0
        now = self._now
        end = None if budget_ns is None else now() + budget_ns
        done = 0
        for i in list(self.pending):
            model = self._rungs[i].model
            assert model is not None
            x = self.pending[i]
            st = model.service_time
            t = now()
            overdue = t - self._pending_since.get(i, t) >= self.overdue_ns
            if end is not None and t + st.mean_ns(x.shape[0]) > end and not overdue:
                continue
            del self.pending[i]
            self._pending_since.pop(i, None)
            ts = now()
            try:
                model.runtime.run(x)
            except Exception:
                failed[i] += 1
                continue
            te = now()
            fold_probe(st, x.shape[0], te - ts)
            last_observed[i] = te
            done += 1
        self.owner_runs += done
        return done

    def close(self) -> None:
        """Stop the background worker (after the probe in flight, if any)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5.0)
            self._thread = None
