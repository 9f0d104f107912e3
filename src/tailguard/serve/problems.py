"""Errors of ``tailguard serve`` itself (not of a request), each with a stable code::

    TailguardError
    └── ServeError              "serve_error"
        └── NatsUnavailable     "nats_unavailable"   --nats given, the NATS server unreachable at start

Raised at start, before the replica reports ready; the command prints the code and exits 2.
"""

from __future__ import annotations

from tailguard.errors import TailguardError

__all__ = ["NatsUnavailable", "ServeError"]


class ServeError(TailguardError):
    """A serving process could not start or go on."""

    code = "serve_error"


class NatsUnavailable(ServeError):
    """``--nats``: the NATS server could not be reached within the connect timeout at start
    (once connected, a lost connection is retried for ever and does not raise)."""

    code = "nats_unavailable"
