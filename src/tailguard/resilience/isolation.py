"""Deadline isolation: run a model on its own thread so the caller can stop waiting.

An inline model call cannot be interrupted: if the model turns slow, the first calls that
meet the slowness are late before its service-time estimate learns to skip it.  A model
declared with ``isolation = "thread"`` runs on a dedicated worker thread instead; the engine
hands it the input and waits at most until the time left minus what the lower rungs need.
On timeout the engine moves down the ladder at once; the late call finishes in the
background, its result is discarded, and its duration still feeds the estimate.  While a
late call is still running the model is *busy*: the next calls return at once without an
answer (counted as timed out, like a wait of zero or less; it cannot run two calls).

The price is a thread hand-off per call (tens of microseconds on a small machine), so this
is for models whose budgets are in milliseconds or whose slowness must never leak into a
reply.  The worker must release the GIL while it computes, or the waiting thread could not
time out: ONNX Runtime always does, and ``load_service`` isolates a GIL-releasing clone of a
compiled-tree runtime (the serving instance keeps the GIL).
"""

from __future__ import annotations

import threading

import numpy as np

from tailguard.clock import Clock
from tailguard.models.runtime import Runtime

__all__ = ["IsolatedRuntime"]


class IsolatedRuntime:
    """Wraps a runtime with a worker thread; ``call`` waits at most a timeout.

    One caller thread (the engine's owner) and one worker thread.  The worker owns the
    inner runtime; the caller never touches it directly.
    """

    def __init__(self, inner: Runtime, clock: Clock, name: str = "model") -> None:
        self.inner = inner
        self.kind = f"isolated({inner.kind})"
        self.n_inputs = inner.n_inputs
        self.n_outputs = inner.n_outputs
        self._now = clock.now_ns
        self._x = np.zeros((64, inner.n_inputs), dtype=np.float32)
        self._n = 0
        self._out = np.zeros((64, inner.n_outputs), dtype=np.float64)
        self._go = threading.Event()
        self._done = threading.Event()
        self._error: BaseException | None = None
        self.busy = False
        self.timeouts = 0
        #: Durations of calls that finished after the caller gave up, for the engine to fold
        #: into the model's estimate (appended by the worker, drained by the caller).
        self.late_ns: list[tuple[int, int]] = []  # (batch size, ns)
        self.last_ns = 0
        self._stop = False
        self._abandoned = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"tailguard-{name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            self._go.wait()
            self._go.clear()
            if self._stop:
                return
            t0 = self._now()
            try:
                y = self.inner.run(self._x[: self._n])
                self._out[: self._n] = y
                self._error = None
            except BaseException as exc:  # reported to the caller, never kills the worker
                self._error = exc
            self.last_ns = self._now() - t0
            with self._lock:  # the caller decides "abandoned" under the same lock
                if self._abandoned:
                    self.late_ns.append((self._n, self.last_ns))
                self.busy = False
                self._done.set()

    def call(self, x: np.ndarray, timeout_ns: int) -> np.ndarray | None:
        """Run on the worker; the outputs, or None if busy or not done within ``timeout_ns``.
        Raises what the model raised."""
        if self.busy or timeout_ns <= 0:
            return None
        n = x.shape[0]
        if n > self._x.shape[0]:
            self._x = np.zeros((n, self.n_inputs), dtype=np.float32)
            self._out = np.zeros((n, self.n_outputs), dtype=np.float64)
        self._x[:n] = x
        self._n = n
        self._abandoned = False
        self._done.clear()
        self.busy = True
        self._go.set()
        if not self._done.wait(timeout_ns / 1e9):
            with self._lock:
                if not self._done.is_set():  # else it finished just now: take the answer
                    self._abandoned = True
                    self.timeouts += 1
                    return None
        if self._error is not None:
            raise self._error
        return self._out[:n]

    def run(self, x: np.ndarray) -> np.ndarray:
        """Blocking call (warm-up, probes): waits however long the model takes."""
        while self.busy:
            self._done.wait()
        y = self.call(x, 3_600 * 10**9)
        assert y is not None
        return y

    def close(self) -> None:
        """Stop the worker thread (after any call in flight)."""
        self._stop = True
        self._go.set()
        self._thread.join(timeout=5.0)
