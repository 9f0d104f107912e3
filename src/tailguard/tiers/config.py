"""The remote tier's knobs: a frozen struct, built in Python or read from a ``tiers.toml``.

``service.toml`` refuses unknown tables, so the tier settings live in their own small file
(by convention ``tiers.toml`` beside the edge service's ``service.toml``)::

    [remote]
    endpoints = ["127.0.0.1:7470"]   # the tailguard server(s) of the remote tier
    prior = "500us"          # round trip assumed until enough have been observed
    margin = "50us"          # kept back: estimate + margin must fit in the remaining budget
    quantile = 0.99          # the quantile of recent round trips planned for
    window = 256             # round trips kept
    min_samples = 16         # round trips needed before the window alone sets the estimate
    max_age = "10s"          # older round trips are forgotten (a slow spell ends)
    accept_fallback = false  # use a remote answer from a rung below its first?

    [remote.breaker]         # tailguard.resilience.breaker.BreakerConfig (durations as strings)
    failures = 5
    window = 50
    failure_rate = 0.5
    slow = "50ms"
    slow_rate = 0.5
    open = "500ms"
    max_open = "10s"
    half_open_calls = 1

Durations are strings with a unit (``"250us"``, ``"2ms"``) or numbers of seconds, as in the
service spec.  A bad file raises ``SpecError`` naming the field path.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from tailguard.errors import SpecError
from tailguard.resilience.breaker import BreakerConfig
from tailguard.spec import Duration, dec_hook, read_toml

__all__ = ["RemoteBreakerSpec", "RemoteTierConfig", "load_tiers_config"]


class RemoteBreakerSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The remote tier's circuit breaker (``BreakerConfig``'s fields; durations in seconds).

    Defaults differ from ``BreakerConfig``'s: a remote tier is a network hop, so a call is
    slow only past 50 ms, and an open breaker tries again after 0.5 s (up to 10 s)."""

    failures: int = 5
    window: int = 50
    failure_rate: float = 0.5
    slow_s: Duration = msgspec.field(default=Duration(0.05), name="slow")
    slow_rate: float = 0.5
    open_s: Duration = msgspec.field(default=Duration(0.5), name="open")
    max_open_s: Duration = msgspec.field(default=Duration(10.0), name="max_open")
    half_open_calls: int = 1

    def breaker_config(self) -> BreakerConfig:
        """The ``BreakerConfig`` these settings describe (raises ValueError when inconsistent)."""
        return BreakerConfig(failures=self.failures, window=self.window, failure_rate=self.failure_rate,
                             slow_s=float(self.slow_s), slow_rate=self.slow_rate, open_s=float(self.open_s),
                             max_open_s=float(self.max_open_s), half_open_calls=self.half_open_calls)


class RemoteTierConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """When the tiered engine consults the remote tier (durations in float seconds; the
    TOML names drop the ``_s``).  See the module docstring for each knob."""

    endpoints: tuple[str, ...] = ()
    prior_s: Duration = msgspec.field(default=Duration(500e-6), name="prior")
    margin_s: Duration = msgspec.field(default=Duration(50e-6), name="margin")
    quantile: float = 0.99
    window: int = 256
    min_samples: int = 16
    max_age_s: Duration = msgspec.field(default=Duration(10.0), name="max_age")
    accept_fallback: bool = False
    #: Client settings used by ``TieredEngine.connect``: idle connections kept per endpoint
    #: and the connect (plus handshake) timeout.
    pool_size: int = 2
    connect_timeout_s: Duration = msgspec.field(default=Duration(0.5), name="connect_timeout")
    breaker: RemoteBreakerSpec = msgspec.field(default_factory=RemoteBreakerSpec)

    def __post_init__(self) -> None:
        if not 0.0 < self.quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {self.quantile!r}")
        if self.window < 1 or self.min_samples < 1 or self.pool_size < 1:
            raise ValueError("window, min_samples and pool_size must be >= 1")
        self.breaker.breaker_config()  # its own checks, at construction


def load_tiers_config(path: str | Path) -> RemoteTierConfig:
    """Read the ``[remote]`` table of a tiers file (or of ``tiers.toml`` in a directory).
    A missing table gives the defaults; a bad file raises ``SpecError``."""
    data, p = read_toml(path, "tiers.toml", "tiers file")
    try:
        return msgspec.convert(data.get("remote", {}), RemoteTierConfig, dec_hook=dec_hook)
    except (msgspec.ValidationError, ValueError) as exc:
        msg = str(exc)
        at = msg.rsplit(" - at ", 1)[1].strip("`") if " - at " in msg else "$"
        path_ = "$.remote" + at[1:] if at.startswith("$") else "$.remote"
        raise SpecError(msg, path=path_, source=str(p)) from exc
