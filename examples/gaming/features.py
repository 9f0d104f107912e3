"""Transforms of the gaming service (referenced from service.toml).

Three kinds of events arrive per player (key ``player``), each routed to the view whose
declared ``inputs`` it carries:

* an engagement (a fight): ``kill``, ``headshot``, ``accuracy``, ``reaction_ms`` and the
  ``opponent`` -> view ``combat`` (``Combat``);
* an input-telemetry sample: ``input_rate`` (actions/s) and ``aim_snap`` (peak aim speed)
  -> view ``inputs`` (``Inputs``);
* a report filed by another player: ``report`` and the ``reporter`` -> view ``reports``
  (``Reports``).

``match_features`` is the request transform of view ``match``: the context of the decision
(ping and the player's kills and deaths in the match that just ended).

Every aggregate is an event-time incremental one from ``tailguard.features.aggregates``:
EWMAs, an exact sliding-window mean and standard deviation of reaction times (their
regularity gives an aimbot away), a window count, a distinct-opponents sketch, the last
three accuracies, time-decayed report counts.  Replaying the same events gives the same
values bit for bit, so train.py builds its training rows by replay.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tailguard.features.aggregates import (
    DecayedCount,
    Ewma,
    EwmVar,
    HyperLogLog,
    LastN,
    WindowCount,
    WindowMean,
    WindowVar,
)

SECOND = 1_000_000_000
HOUR = 3600 * SECOND
REACTION_WINDOW_NS = 2 * HOUR
COMBAT_FIELDS = (
    "kill_rate", "headshot_rate", "accuracy_ewm", "reaction_mean", "reaction_std",
    "fights_1h", "distinct_opponents", "acc_last_1", "acc_last_2", "acc_last_3",
)
INPUT_FIELDS = ("input_rate_ewm", "input_rate_std", "aim_snap_ewm")
REPORT_FIELDS = ("reports_decayed", "distinct_reporters")


class CombatState:
    """Per-player fight aggregates."""

    __slots__ = ("acc", "fights", "head", "kill", "last_acc", "opponents", "out", "react_mean",
                 "react_var")

    def __init__(self) -> None:
        self.kill = Ewma(0.05)
        self.head = Ewma(0.1)  # over kills only
        self.acc = Ewma(0.05)
        self.react_mean = WindowMean(REACTION_WINDOW_NS)
        self.react_var = WindowVar(REACTION_WINDOW_NS)
        self.fights = WindowCount(HOUR)
        self.opponents = HyperLogLog(p=6)
        self.last_acc = LastN(3, fill=-1.0)
        self.out = [0.0] * len(COMBAT_FIELDS)


class Combat:
    """Stream transform for view ``combat``."""

    fields = COMBAT_FIELDS

    def new_state(self) -> CombatState:
        """A player with no fight yet."""
        return CombatState()

    def update(self, s: CombatState, ev: Mapping[str, Any]) -> None:
        """Fold one engagement in."""
        ts = int(ev["ts_ns"])
        out = s.out
        kill = float(ev["kill"])
        acc = float(ev["accuracy"])
        reaction = float(ev["reaction_ms"])
        out[0] = s.kill.update(kill)
        if kill > 0.0:
            out[1] = s.head.update(float(ev["headshot"]))
        out[2] = s.acc.update(acc)
        out[3] = s.react_mean.update(ts, reaction)
        s.react_var.update(ts, reaction)
        std = s.react_var.std
        out[4] = std if std == std else 0.0  # NaN below two samples
        out[5] = float(s.fights.update(ts))
        out[6] = s.opponents.update(str(ev["opponent"]))
        out[7:10] = s.last_acc.update(ts, acc)

    def values(self, s: CombatState) -> list[float]:
        """The view's fields, in declared order."""
        return s.out


class InputState:
    """Per-player input-telemetry aggregates."""

    __slots__ = ("out", "rate", "rate_var", "snap")

    def __init__(self) -> None:
        self.rate = Ewma(0.1)
        self.rate_var = EwmVar(0.1)
        self.snap = Ewma(0.1)
        self.out = [0.0] * len(INPUT_FIELDS)


class Inputs:
    """Stream transform for view ``inputs``."""

    fields = INPUT_FIELDS

    def new_state(self) -> InputState:
        """A player with no telemetry yet."""
        return InputState()

    def update(self, s: InputState, ev: Mapping[str, Any]) -> None:
        """Fold one telemetry sample in."""
        rate = float(ev["input_rate"])
        s.out[0] = s.rate.update(rate)
        s.out[1] = math.sqrt(s.rate_var.update(rate))
        s.out[2] = s.snap.update(float(ev["aim_snap"]))

    def values(self, s: InputState) -> list[float]:
        """The view's fields, in declared order."""
        return s.out


class ReportState:
    """Per-player report aggregates."""

    __slots__ = ("count", "out", "reporters")

    def __init__(self) -> None:
        self.count = DecayedCount(6 * HOUR)
        self.reporters = HyperLogLog(p=4)
        self.out = [0.0] * len(REPORT_FIELDS)


class Reports:
    """Stream transform for view ``reports``."""

    fields = REPORT_FIELDS

    def new_state(self) -> ReportState:
        """A player never reported."""
        return ReportState()

    def update(self, s: ReportState, ev: Mapping[str, Any]) -> None:
        """Fold one report in."""
        s.out[0] = s.count.update(int(ev["ts_ns"]), float(ev["report"]))
        s.out[1] = s.reporters.update(str(ev["reporter"]))

    def values(self, s: ReportState) -> list[float]:
        """The view's fields, in declared order."""
        return s.out


def match_features(ping_ms: Any, match_kills: Any, match_deaths: Any) -> tuple[Any, Any, Any]:
    """Ping, kills per death (+1) and kills of the match just played (floats or arrays)."""
    return ping_ms * 1.0, match_kills / (match_deaths + 1.0), match_kills * 1.0
