"""The stress suite's errors (they extend the tree in ``tailguard.errors``)::

    TailguardError
    ├── StressError        "stress_setup"     a scenario could not be set up: a missing
    │                                         redis-server or nats-server, a server that did
    │                                         not start, an unknown scenario name
    └── InjectedFault      "injected_fault"   raised on purpose by a model the ``raising-model``
                                              scenario broke (the ladder must answer instead)

``tailguard.cli`` turns a ``StressError`` into one line on stderr and exit status 2.
"""

from __future__ import annotations

from tailguard.errors import TailguardError

__all__ = ["InjectedFault", "StressError"]


class StressError(TailguardError):
    """A stress scenario could not be set up (exit status 2)."""

    code = "stress_setup"


class InjectedFault(TailguardError):
    """A model call that the fault injector made fail on purpose."""

    code = "injected_fault"
