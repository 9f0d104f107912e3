"""An alert sink for the drift tests: keeps every event it is sent."""

from __future__ import annotations

from typing import Any

from tailguard.observe.alerts import AlertEvent


class ListSink:
    """Keeps what it is sent."""

    def __init__(self) -> None:
        self.events: list[AlertEvent] = []
        self.closed = False

    def send(self, event: AlertEvent) -> None:
        self.events.append(event)

    def close(self) -> None:
        self.closed = True

    def statistics(self) -> dict[str, Any]:
        return {"sent": len(self.events), "failed": 0, "dropped": 0}

    def of(self, signal: str) -> list[str]:
        """The states of the events sent for ``signal``, in order."""
        return [e.state for e in self.events if e.signal == signal]
