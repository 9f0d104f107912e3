"""Drift alerts: the hysteresis state machine (enter after N windows over the alert threshold,
leave after M windows under the lower clear threshold), events stamped by the injected clock,
and sinks that raise never stopping the side path."""

from __future__ import annotations

import pytest
from alertkit import ListSink
from hypothesis import given
from hypothesis import strategies as st

from tailguard.observe.alerts import AlertEvent, Alerts, AlertState, Hysteresis
from tailguard.testing import FakeClock


class BrokenSink(ListSink):
    def send(self, event: AlertEvent) -> None:
        raise RuntimeError("receiver gone")

    def close(self) -> None:
        raise RuntimeError("receiver gone")


def run(h: Hysteresis, values: list[float]) -> list[bool | None]:
    return [h.update(v) for v in values]


def test_alert_needs_enter_windows_in_a_row() -> None:
    h = Hysteresis(alert=0.25, clear=0.1, enter=2, exit=3)
    assert run(h, [0.3, 0.2, 0.3]) == [None, None, None]  # interrupted: the count restarts
    assert h.state is AlertState.PENDING
    assert h.update(0.26) is True
    assert h.state is AlertState.ALERT and h.alerting


def test_alert_clears_after_exit_windows_under_clear() -> None:
    h = Hysteresis(alert=0.25, clear=0.1, enter=1, exit=3)
    assert h.update(0.5) is True
    # Between the thresholds: stays alerting (no flapping at the alert threshold).
    assert run(h, [0.2, 0.24, 0.11]) == [None, None, None]
    assert h.state is AlertState.ALERT
    assert run(h, [0.05, 0.05]) == [None, None]
    assert h.state is AlertState.RECOVERING and h.alerting
    assert h.update(0.15) is None  # back over clear: recovery starts again
    assert h.state is AlertState.ALERT
    assert run(h, [0.0, 0.0, 0.0]) == [None, None, False]
    assert h.state is AlertState.OK and not h.alerting


def test_nan_scores_change_nothing() -> None:
    h = Hysteresis(alert=0.25, clear=0.1, enter=2, exit=1)
    assert run(h, [0.3, float("nan"), 0.3]) == [None, None, True]
    assert run(h, [float("nan"), 0.0]) == [None, False]


def test_thresholds_are_checked() -> None:
    with pytest.raises(ValueError):
        Hysteresis(alert=0.1, clear=0.2)
    with pytest.raises(ValueError):
        Hysteresis(alert=0.2, clear=0.1, enter=0)


@given(st.lists(st.floats(0.0, 1.0), max_size=60), st.integers(1, 4), st.integers(1, 4))
def test_events_alternate_and_match_the_state(values: list[float], enter: int, exit: int) -> None:
    h = Hysteresis(alert=0.5, clear=0.2, enter=enter, exit=exit)
    flips = [f for f in run(h, values) if f is not None]
    assert flips == [i % 2 == 0 for i in range(len(flips))]  # alert, clear, alert, ...
    assert h.alerting == (len(flips) % 2 == 1)


def test_alerts_send_events_stamped_by_the_injected_clock() -> None:
    clock = FakeClock()
    sink = ListSink()
    alerts = Alerts("svc", [sink], lambda s: Hysteresis(0.25, 0.1, 1, 2) if s.startswith("psi:") else None,
                    clock.wall_ns)
    assert alerts.update("error:mean", 9.0, 0) is None  # no thresholds: never alerts
    clock.advance(3.0)
    ev = alerts.update("psi:a.x", 0.4, 7)
    assert ev is not None and sink.events == [ev]
    assert (ev.service, ev.signal, ev.state, ev.value, ev.threshold, ev.window) == \
        ("svc", "psi:a.x", "alert", 0.4, 0.25, 7)
    assert ev.wall_ns == clock.wall_ns()
    assert alerts.active() == ["psi:a.x"] and alerts.state("psi:a.x") is AlertState.ALERT
    clock.advance(5.0)
    alerts.update("psi:a.x", 0.0, 8)
    clear = alerts.update("psi:a.x", 0.0, 9)
    assert clear is not None and clear.state == "clear" and clear.threshold == 0.1
    assert clear.wall_ns - ev.wall_ns == 5_000_000_000
    assert alerts.statistics()["raised"] == 1 and alerts.statistics()["cleared"] == 1
    assert alerts.active() == []


def test_a_raising_sink_is_counted_and_others_still_receive() -> None:
    good = ListSink()
    alerts = Alerts("svc", [BrokenSink(), good], lambda s: Hysteresis(1.0, 1.0, 1, 1), FakeClock().wall_ns)
    alerts.update("adwin:prediction", 1.0, 0)
    assert len(good.events) == 1
    alerts.close()
    assert good.closed
    assert alerts.statistics()["sink_errors"] == 2
