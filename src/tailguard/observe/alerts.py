"""Drift alerts: one hysteresis state machine per signal, and events sent to sinks.

A drift score is noisy from window to window.  ``Hysteresis`` turns a score sequence into a
state that does not flap: a signal enters ``ALERT`` only after ``enter`` consecutive windows
at or over the ``alert`` threshold, and leaves it only after ``exit`` consecutive windows
under the lower ``clear`` threshold.  Scores between the two thresholds keep the current
state.  A NaN score (no data this window) changes nothing.

::

    OK --(>= alert)--> PENDING --(enter in a row)--> ALERT --(< clear)--> RECOVERING
     ^                    |  (< alert)                 ^            |  (exit in a row)
     +--------------------+                            +-(>= clear)-+-----------------> OK

Entering ``ALERT`` and returning to ``OK`` each produce one ``AlertEvent``, which ``Alerts``
hands to every sink (``tailguard.observe.sinks``).  Sinks never block and never raise into
the caller; a sink that raises anyway is counted as failed.

Owner: the side path's thread (the monitor's ``drain``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import msgspec

__all__ = ["AlertEvent", "AlertSink", "AlertState", "Alerts", "Hysteresis"]


class AlertState(enum.Enum):
    """Where a signal stands (the value is what statistics report)."""

    OK = "ok"
    PENDING = "pending"  # over the alert threshold, not yet for ``enter`` windows in a row
    ALERT = "alert"
    RECOVERING = "recovering"  # alerting, under the clear threshold, not yet ``exit`` windows


class AlertEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One transition of one signal, as sinks receive it (encoded as a JSON object)."""

    service: str
    #: ``psi:ticks.ret_1s``, ``ks:prediction.p_up``, ``adwin:prediction`` ...
    signal: str
    #: ``alert`` (entered ALERT) or ``clear`` (back to OK).
    state: str
    value: float
    #: The threshold crossed: ``alert`` for alert events, ``clear`` for clear events.
    threshold: float
    #: The monitor's window number when it happened.
    window: int
    #: Wall-clock time, ns since the Unix epoch.
    wall_ns: int


class AlertSink(Protocol):
    """Where events go.  ``send`` must return at once and never raise (queue, then deliver
    elsewhere); ``close`` delivers what is queued within the sink's timeout."""

    def send(self, event: AlertEvent) -> None:
        """Queue one event for delivery."""
        ...

    def close(self) -> None:
        """Deliver what is queued (bounded by the sink's timeout) and release resources."""
        ...

    def statistics(self) -> dict[str, Any]:
        """Counters: sent, failed, dropped."""
        ...


class Hysteresis:
    """The state machine of one signal (thresholds in the score's units)."""

    __slots__ = ("_run", "alert", "clear", "enter", "exit", "state")

    def __init__(self, alert: float, clear: float, enter: int = 2, exit: int = 3) -> None:
        if clear > alert or enter < 1 or exit < 1:
            raise ValueError("need clear <= alert, enter >= 1 and exit >= 1")
        self.alert, self.clear, self.enter, self.exit = alert, clear, enter, exit
        self.state = AlertState.OK
        self._run = 0  # consecutive windows counting towards the next transition

    def update(self, value: float) -> bool | None:
        """Take one window's score.  True: ALERT entered now; False: cleared now; else None."""
        if value != value:
            return None
        s = self.state
        if s is AlertState.OK or s is AlertState.PENDING:
            if value < self.alert:
                self.state, self._run = AlertState.OK, 0
                return None
            self._run += 1
            if self._run >= self.enter:
                self.state, self._run = AlertState.ALERT, 0
                return True
            self.state = AlertState.PENDING
            return None
        if value >= self.clear:
            self.state, self._run = AlertState.ALERT, 0
            return None
        self._run += 1
        if self._run >= self.exit:
            self.state, self._run = AlertState.OK, 0
            return False
        self.state = AlertState.RECOVERING
        return None

    @property
    def alerting(self) -> bool:
        """In ALERT or RECOVERING (an alert was raised and has not cleared)."""
        return self.state is AlertState.ALERT or self.state is AlertState.RECOVERING


class Alerts:
    """Hysteresis per signal, made on first use by ``thresholds(signal)``, and the sinks."""

    def __init__(self, service: str, sinks: Sequence[AlertSink],
                 thresholds: Callable[[str], Hysteresis | None], wall_ns: Callable[[], int]) -> None:
        self.service = service
        self.sinks = tuple(sinks)
        self._thresholds = thresholds
        self._wall_ns = wall_ns
        self.machines: dict[str, Hysteresis | None] = {}
        self.raised = 0
        self.cleared = 0
        self.sink_errors = 0

    def update(self, signal: str, value: float, window: int) -> AlertEvent | None:
        """One score of ``signal``; sends and returns the event when the state flips."""
        m = self.machines.get(signal)
        if m is None:
            if signal in self.machines:
                return None  # a signal that does not alert
            m = self.machines[signal] = self._thresholds(signal)
            if m is None:
                return None
        flipped = m.update(value)
        if flipped is None:
            return None
        event = AlertEvent(service=self.service, signal=signal, state="alert" if flipped else "clear",
                           value=float(value), threshold=m.alert if flipped else m.clear,
                           window=window, wall_ns=self._wall_ns())
        if flipped:
            self.raised += 1
        else:
            self.cleared += 1
        for sink in self.sinks:
            try:
                sink.send(event)
            except Exception:  # a sink must not raise; if one does, the side path goes on
                self.sink_errors += 1
        return event

    def state(self, signal: str) -> AlertState:
        """The signal's state (OK for a signal never scored)."""
        m = self.machines.get(signal)
        return AlertState.OK if m is None else m.state

    def active(self) -> list[str]:
        """Signals in ALERT or RECOVERING, sorted."""
        return sorted(s for s, m in self.machines.items() if m is not None and m.alerting)

    def close(self) -> None:
        """Close every sink (each delivers what it holds within its timeout)."""
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                self.sink_errors += 1

    def statistics(self) -> dict[str, Any]:
        """Alerts raised and cleared, active signals, and each sink's counters."""
        return {"raised": self.raised, "cleared": self.cleared, "active": self.active(),
                "sink_errors": self.sink_errors,
                "sinks": [{"kind": type(s).__name__, **s.statistics()} for s in self.sinks]}
