"""The drift monitor: feature and prediction drift against a training reference, off the reply path.

``DriftMonitor`` is a side task (``service.attach(monitor)``).  Attached, it reads the
service's shared ``DecisionTap`` (the reply path's one copy of each decision, which the audit
log reads too) and moves new decisions into its own ring at the start of each ``drain``; used
on its own it is a decision hook that copies each decision's feature rows into that ring
(``tailguard.observe.intake``).  On the side path (``drain``) it

1. turns queued decisions into rows of features and monitored-model outputs, and feeds the
   monitored output to the streaming change detectors (ADWIN, Page-Hinkley; standardised by
   the reference) — a detection alerts at once;
2. fills a window of ``window`` decisions (or fewer, once ``window_interval`` has passed with
   ``min_window``) and, when it closes, scores every feature and output against the
   reference — PSI and KS, vectorised over all signals (``Reference.scores``) — in steps of a
   few signals each, sized to the budget left in the ``drain`` call (``STEP_NS`` at most, one
   signal at least; the first step of a monitor scores one signal to learn the cost), so a
   window's scores may take several side-path ticks and no single step holds the loop long;
3. matches delayed labels (``observe_label``) to the predictions they label and feeds the
   absolute error to an ADWIN detector;
4. runs each signal's hysteresis (``tailguard.observe.alerts``) and sends alert events to
   the sinks.

``drift_scores()`` returns the latest value of every signal: ``psi:<column>``,
``ks:<column>`` (columns are ``view.field`` or ``prediction.<output>``), ``adwin:prediction``
/ ``page_hinkley:prediction`` (detections in the latest window), and with labels
``adwin:error`` and ``error:mean``.  ``statistics()`` holds the counters.

Owner: the engine's thread (hooks, ``drain``, ``close``); ``observe_label`` may be called
from any thread (it appends to a deque).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tailguard.clock import Clock, MonotonicClock
from tailguard.engine import Engine
from tailguard.observe.alerts import Alerts, AlertSink, Hysteresis
from tailguard.observe.detectors import DetectorKind, StreamDetector
from tailguard.observe.intake import DecisionRing
from tailguard.observe.labels import PendingPredictions, key_of
from tailguard.observe.reference import DriftError, DriftReferenceError, Reference
from tailguard.spec import DriftSpec

if TYPE_CHECKING:
    from tailguard.service import Service

__all__ = ["STEP_NS", "DriftMonitor"]

#: Longest scoring step on the side path (a budgeted ``drain`` sizes its steps to the budget left).
STEP_NS = 200_000
_CHUNK = 512  # rows converted or moved into the window per step


class DriftMonitor(DecisionRing):
    """Drift of one engine's decisions against ``reference`` (see the module docstring)."""

    def __init__(self, reference: Reference, spec: DriftSpec | None = None, *, engine: Engine | None = None,
                 clock: Clock | None = None, sinks: Sequence[AlertSink] = (), service: str = "") -> None:
        spec = spec or DriftSpec()
        self.spec = spec
        self.reference = reference
        nf, outputs = reference.n_features, reference.outputs
        if engine is not None:
            _check_layout(reference, engine.assembler.columns, engine.output_names)
        name = spec.output or (outputs[0] if outputs else "")
        if name not in outputs:
            raise DriftError(f"[drift] output {name!r} is not one of the reference's outputs {list(outputs)}")
        o = outputs.index(name)
        self.clock: Clock = clock or (engine.clock if engine is not None else MonotonicClock())
        pending = PendingPredictions(spec.label_capacity) if spec.labels else None
        super().__init__(nf, len(outputs), spec.capacity, engine=engine,
                         stamp=self.clock.now_ns if spec.labels else None, pending=pending, label_output=o)
        self._labelled = pending
        self._nsig = len(reference.names)
        self._win = np.zeros((spec.window, self._nsig), dtype=np.float32)
        self._spare = np.zeros_like(self._win)
        self._wn = 0
        self._win_start_ns = 0
        self._interval_ns = None if spec.window_interval is None else round(spec.window_interval * 1e9)
        self._job: _Job | None = None
        self._signal_ns = 0  # measured cost of scoring one signal (0: not measured yet)
        self.windows = 0
        params = {"adwin_delta": spec.adwin_delta, "ph_threshold": spec.ph_threshold,
                  "ph_delta": spec.ph_delta}
        col = nf + o
        self._out_col = col
        self.detectors = [StreamDetector(DetectorKind(k), "prediction", center=float(reference.mean[col]),
                                         scale=float(reference.std[col]), **params) for k in spec.detectors]
        self.error_detector = StreamDetector(DetectorKind.ADWIN, "error", **params) if spec.labels else None
        self.alerts = Alerts(service, sinks, self._thresholds, self.clock.wall_ns)
        self.scores: dict[str, float] = {}
        self._labels: deque[tuple[Any, float, int | None, float | None]] = deque()
        self._err_sum, self._err_n = 0.0, 0
        self.labels_matched = self.labels_unmatched = self.labels_dropped = 0

    @classmethod
    def from_spec(cls, service: Service, spec: DriftSpec | None = None, *,
                  sinks: Sequence[AlertSink] | None = None, clock: Clock | None = None) -> DriftMonitor:
        """A monitor for a loaded service from its ``[drift]`` section (or ``spec``): loads the
        reference (path relative to the service directory), checks it against the live feature
        view versions, builds the declared sinks.  Attach it with ``service.attach(...)``.
        ``clock`` (default: the engine's) times the windows' ``window_interval``."""
        from tailguard.observe.sinks import build_sinks

        spec = spec or service.spec.drift
        ref = Reference.load(service.directory / Path(spec.reference))
        pinned = ref.meta.get("feature_versions", {})
        stale = {v: (p, service.feature_versions.get(v)) for v, p in pinned.items()
                 if service.feature_versions.get(v) != p}
        if stale:
            raise DriftReferenceError(f"the drift reference was built on other feature view versions "
                                      f"{stale} (pinned, live): rebuild it with `tailguard drift reference`")
        return cls(ref, spec, engine=service.engine, service=service.spec.name, clock=clock,
                   sinks=build_sinks(spec.sinks, service.spec.name) if sinks is None else sinks)

    # -- labels (any thread) ----------------------------------------------------------------------
    def observe_label(self, key: Any, label: float, *, decided_ns: int | None = None,
                      prediction: float | None = None) -> None:
        """A delayed label for the decision on ``key`` (its oldest unlabelled prediction, or the
        newest made at or before ``decided_ns`` on the engine's clock; docs/drift.md), or for an
        explicit ``prediction``.  Queued: matched on the side path."""
        if len(self._labels) >= self.spec.label_capacity:
            self.labels_dropped += 1
            return
        self._labels.append((key_of(key), float(label), decided_ns, prediction))

    # -- side path --------------------------------------------------------------------------------
    def drain(self, budget_ns: int | None = None) -> int:
        """Do queued work for about ``budget_ns`` (None: all of it); returns rows and labels handled."""
        now = time.perf_counter_ns
        end = None if budget_ns is None else now() + budget_ns
        self._pull()  # from the shared tap, when bound: keeps it from holding the tap back
        done = 0
        while True:
            n = self._step(None if end is None else end - now())
            if n < 0:
                return done
            done += n
            if end is not None and now() >= end:
                return done

    def _step(self, left_ns: int | None) -> int:
        """One unit of work, sized to ``left_ns`` (None: unbounded) where it can be; the number of
        rows/labels it handled, or -1 when idle."""
        if self._job is not None:
            self._advance(left_ns)
            return 0
        if self._tail < self._conv:
            self._fill()
            return 0
        if self._conv < self._head:
            return self._convert(_CHUNK)
        if self._labels:
            return self._match_labels(_CHUNK)
        if (self._interval_ns is not None and self._wn >= self.spec.min_window
                and self.clock.now_ns() - self._win_start_ns >= self._interval_ns):
            self._close_window()
            return 0
        return -1

    def _fill(self) -> None:
        n = min(self._conv - self._tail, self.spec.window - self._wn, _CHUNK)
        if self._wn == 0:
            self._win_start_ns = self.clock.now_ns()
        a = self._wn
        nf = self.reference.n_features
        self._take(self._win[a:a + n, :nf], self._win[a:a + n, nf:], n)
        self._wn = a + n
        values = self._win[a:a + n, self._out_col].tolist()
        for det in self.detectors:
            if det.update_many(values):
                self._detected(det)
        if self._wn == self.spec.window:
            self._close_window()

    def _detected(self, det: StreamDetector) -> None:
        self.scores[det.name] = float(det.window_detections)
        self.alerts.update(det.name, float(det.window_detections), self.windows)

    def _close_window(self) -> None:
        if self._job is not None:
            self._advance(None)  # the previous window's scores first (its buffer is reused next)
        n, self._wn = self._wn, 0
        self._win, self._spare = self._spare, self._win
        self._job = _Job(self._spare[:n], self.windows, self._nsig)
        self.windows += 1
        for det in (*self.detectors, *([self.error_detector] if self.error_detector else [])):
            v = float(det.end_window())
            self.scores[det.name] = v
            self.alerts.update(det.name, v, self._job.window)
        if self._labelled is not None:
            self.scores["error:mean"] = self._err_sum / self._err_n if self._err_n else math.nan
            self._err_sum, self._err_n = 0.0, 0

    def _advance(self, left_ns: int | None) -> None:
        """Score the next signals of the window in progress: as many as fit in ``left_ns``
        (capped at ``STEP_NS``; at least one; all when None) at the measured cost per signal."""
        job = self._job
        assert job is not None
        lo = job.next
        if left_ns is None:
            hi = self._nsig
        else:
            group = min(left_ns, STEP_NS) // self._signal_ns if self._signal_ns else 1
            hi = min(self._nsig, lo + max(1, group))
        t0 = time.perf_counter_ns()
        job.psi[lo:hi], job.ks[lo:hi] = self.reference.scores(job.rows, lo, hi)
        per_signal = max(1, (time.perf_counter_ns() - t0) // (hi - lo))
        # A step's cost has a fixed part: the estimate from a one-signal step errs high, so
        # steps start short and grow; the slower of the old and new figures guards the budget.
        old = self._signal_ns
        self._signal_ns = per_signal if not old else max(per_signal, (old + per_signal) // 2)
        job.next = hi
        if hi < self._nsig:
            return
        self._job = None
        for i, name in enumerate(self.reference.names):
            for kind, values in (("psi", job.psi), ("ks", job.ks)):
                signal = f"{kind}:{name}"
                self.scores[signal] = float(values[i])
                self.alerts.update(signal, float(values[i]), job.window)

    def _match_labels(self, limit: int) -> int:
        errors = []
        for _ in range(min(limit, len(self._labels))):
            key, label, decided_ns, pred = self._labels.popleft()
            if pred is None and self._labelled is not None:
                pred = self._labelled.take(key, decided_ns)
            if pred is None:
                self.labels_unmatched += 1
                continue
            errors.append(abs(label - pred))
        self.labels_matched += len(errors)
        self._err_sum += sum(errors)
        self._err_n += len(errors)
        det = self.error_detector
        if det is not None and det.update_many(errors):
            self._detected(det)
        return len(errors)

    def _thresholds(self, signal: str) -> Hysteresis | None:
        kind = signal.split(":", 1)[0]
        if kind in ("psi", "ks"):
            t = self.spec.psi if kind == "psi" else self.spec.ks
            return Hysteresis(t.alert, t.clear, t.enter_windows, t.exit_windows)
        if kind in ("adwin", "page_hinkley"):
            return Hysteresis(1.0, 1.0, 1, self.spec.detector_exit_windows)
        return None

    def close(self) -> None:
        """Process everything queued, score the last window if it holds ``min_window`` rows,
        then close the sinks (each delivers what it holds within its timeout)."""
        self.drain(None)
        if self._wn >= self.spec.min_window:
            self._close_window()
            self.drain(None)
        self.alerts.close()
        if self._reader is not None:
            self._reader.tap.remove(self._reader)

    # -- reading ----------------------------------------------------------------------------------
    def drift_scores(self) -> dict[str, float]:
        """The latest value of every signal (a copy; see the module docstring for the names)."""
        return dict(self.scores)

    def statistics(self) -> dict[str, Any]:
        """Rows recorded and dropped, windows scored, labels, detectors, alerts and sinks."""
        out: dict[str, Any] = {
            "recorded_rows": self.recorded_rows, "dropped_rows": self.dropped_rows,
            "dropped_decisions": self.dropped_decisions, "queued_rows": self.queued_rows,
            "windows": self.windows, "window_rows": self._wn,
            "reference_model": self.reference.meta.get("model", ""),
            "detectors": {d.name: d.statistics() for d in self.detectors},
            "alerts": self.alerts.statistics(),
        }
        if self._labelled is not None:
            out["labels"] = {"matched": self.labels_matched, "unmatched": self.labels_unmatched,
                             "dropped": self.labels_dropped, "pending": self._labelled.size,
                             "evicted": self._labelled.evicted}
            if self.error_detector is not None:
                out["detectors"][self.error_detector.name] = self.error_detector.statistics()
        return out


class _Job:
    """One closed window being scored, a few signals per step."""

    __slots__ = ("ks", "next", "psi", "rows", "window")

    def __init__(self, rows: np.ndarray, window: int, n_signals: int) -> None:
        self.rows = rows
        self.window = window
        self.next = 0
        self.psi = np.full(n_signals, np.nan)
        self.ks = np.full(n_signals, np.nan)


def _check_layout(ref: Reference, columns: Sequence[str], outputs: Sequence[str]) -> None:
    """The reference must describe exactly the engine's feature columns and outputs, in order."""
    have = ref.names[:ref.n_features]
    if tuple(have) != tuple(columns):
        missing = sorted(set(columns) - set(have))
        extra = sorted(set(have) - set(columns))
        raise DriftReferenceError(
            f"the drift reference's feature columns differ from the service's (missing {missing}, "
            f"unknown {extra}, or another order): rebuild it with `tailguard drift reference`")
    if tuple(ref.outputs) != tuple(outputs):
        raise DriftReferenceError(f"the drift reference covers outputs {list(ref.outputs)}, the service "
                                  f"answers {list(outputs)}: rebuild it with `tailguard drift reference`")

