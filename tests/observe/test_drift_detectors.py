"""Streaming change detectors: they fire soon after a mean shift, not on a stationary stream
(seeded), standardise by the reference, skip NaN, count per window, and a missing river is a
clear error at construction."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tailguard.observe.detectors import DetectorKind, StreamDetector
from tailguard.observe.reference import DriftError

pytest.importorskip("river")

KINDS = list(DetectorKind)
CENTER, SCALE = 5.0, 2.0


def stream(seed: int, n: int, change_at: int | None = None, shift_sd: float = 1.0) -> list[float]:
    x = CENTER + SCALE * np.random.default_rng(seed).normal(size=n)
    if change_at is not None:
        x[change_at:] += shift_sd * SCALE
    return list(x.tolist())


def first_detection(det: StreamDetector, values: list[float]) -> int | None:
    for i, v in enumerate(values):
        if det.update_many([v]):
            return i
    return None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shift_sd", [1.0, -1.0])
def test_detects_a_mean_shift_soon_after_the_change(kind: DetectorKind, shift_sd: float) -> None:
    for seed in range(3):
        det = StreamDetector(kind, "prediction", center=CENTER, scale=SCALE)
        at = first_detection(det, stream(seed, 3000, change_at=2000, shift_sd=shift_sd))
        assert at is not None and 2000 <= at < 2300, (seed, at)


@pytest.mark.parametrize("kind", KINDS)
def test_stays_quiet_on_a_stationary_stream(kind: DetectorKind) -> None:
    for seed in range(3):
        det = StreamDetector(kind, "prediction", center=CENTER, scale=SCALE)
        assert det.update_many(stream(seed, 5000)) == 0
        assert det.observed == 5000


def test_standardisation_makes_the_threshold_unit_free() -> None:
    # The same stream in other units (x1000) detects at the same observation.
    values = stream(4, 3000, change_at=2000)
    a = StreamDetector(DetectorKind.PAGE_HINKLEY, "p", center=CENTER, scale=SCALE)
    b = StreamDetector(DetectorKind.PAGE_HINKLEY, "p", center=CENTER * 1000, scale=SCALE * 1000)
    assert first_detection(a, values) == first_detection(b, [v * 1000 for v in values])


def test_a_degenerate_reference_scale_standardises_by_one() -> None:
    det = StreamDetector(DetectorKind.ADWIN, "p", center=float("nan"), scale=0.0)
    assert (det.center, det.scale) == (0.0, 1.0)


def test_nan_values_are_skipped() -> None:
    det = StreamDetector(DetectorKind.ADWIN, "p")
    det.update_many([0.1, float("nan"), 0.2])
    assert det.observed == 2


def test_detections_are_counted_per_window() -> None:
    det = StreamDetector(DetectorKind.PAGE_HINKLEY, "prediction", center=CENTER, scale=SCALE)
    found = det.update_many(stream(1, 6000, change_at=2000, shift_sd=3.0))
    assert found >= 1 and det.detections == found
    assert det.end_window() == found and det.window_detections == 0
    assert det.statistics() == {"observed": 6000, "detections": found, "window_detections": 0}
    assert det.name == "page_hinkley:prediction"


def test_without_river_the_detector_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "river", None)
    with pytest.raises(DriftError, match=r"tailguard\[drift\]"):
        StreamDetector(DetectorKind.ADWIN, "prediction")
