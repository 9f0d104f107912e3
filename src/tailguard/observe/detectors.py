"""Streaming change detectors on the side path: river's ADWIN and Page-Hinkley, standardised.

A ``StreamDetector`` watches one stream of numbers — the predictions of the monitored output,
or the error of predictions whose labels arrived — and counts detections.  Predictions are
standardised against the training reference (mean and standard deviation of the output), so
one threshold fits every model; label errors (|label - prediction|, in [0, 1] for
probabilities) go in as they are, the range ADWIN's bound assumes.  After a detection river
restarts the detector's statistics itself, so a lasting change is detected once, not on
every observation.

The detectors come from ``river.drift`` (the ``drift`` extra): imported when the first
detector is made, and a missing package is a clear ``DriftError`` at load, not at the first
window.

Owner: the side path's thread (``update_many`` is a Python loop over the values: ~0.3 µs
per value for ADWIN, ~0.7 µs for Page-Hinkley on a laptop-class core).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from typing import Any

from tailguard.observe.reference import DriftError

__all__ = ["DetectorKind", "StreamDetector", "make_detector"]


class DetectorKind(enum.Enum):
    """Which change detector (the value is the name used in the spec and in score names)."""

    ADWIN = "adwin"
    PAGE_HINKLEY = "page_hinkley"


def make_detector(kind: DetectorKind, *, adwin_delta: float = 0.002, ph_threshold: float = 50.0,
                  ph_delta: float = 0.1) -> Any:
    """A fresh river detector of ``kind`` (ADWIN: confidence ``delta``; Page-Hinkley:
    ``threshold`` and tolerated drift ``delta`` in units of the standardised stream)."""
    try:
        from river import drift
    except ImportError as exc:  # the optional extra is missing
        raise DriftError("change detectors need the river package: pip install 'tailguard[drift]'") from exc
    if kind is DetectorKind.ADWIN:
        adwin: Any = drift.ADWIN  # its constructor is not annotated
        return adwin(delta=adwin_delta)
    return drift.PageHinkley(threshold=ph_threshold, delta=ph_delta)


class StreamDetector:
    """One detector on one stream; values are fed as ``(value - center) / scale``."""

    __slots__ = ("_detector", "center", "detections", "kind", "name", "observed", "scale",
                 "window_detections")

    def __init__(self, kind: DetectorKind, stream: str, *, center: float = 0.0, scale: float = 1.0,
                 **params: float) -> None:
        self.kind = kind
        #: The score name: ``adwin:prediction``, ``page_hinkley:error`` ...
        self.name = f"{kind.value}:{stream}"
        self.center = center if math.isfinite(center) else 0.0
        # A constant reference output has no spread: standardise by 1 rather than divide by 0.
        self.scale = scale if math.isfinite(scale) and scale > 0.0 else 1.0
        self._detector = make_detector(kind, **params)
        self.detections = 0
        self.window_detections = 0
        self.observed = 0

    def update_many(self, values: Iterable[float]) -> int:
        """Feed values in order; returns how many detections they caused (NaN values skipped)."""
        d = self._detector
        update = d.update
        c, s = self.center, self.scale
        found = 0
        n = 0
        for v in values:
            if v != v:  # NaN: no answer from the monitored model for this row
                continue
            update((v - c) / s)
            n += 1
            if d.drift_detected:
                found += 1
        self.observed += n
        self.detections += found
        self.window_detections += found
        return found

    def end_window(self) -> int:
        """Detections since the previous call (the window's value), and start a new window."""
        n = self.window_detections
        self.window_detections = 0
        return n

    def statistics(self) -> dict[str, Any]:
        """Values observed, detections in total and in the current window."""
        return {"observed": self.observed, "detections": self.detections,
                "window_detections": self.window_detections}
