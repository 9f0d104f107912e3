"""Edge and remote compute tiers: answer in process, consult the large model when time allows.

``TieredEngine.predict`` takes the same arguments as ``Engine.predict`` and decides in two
steps (the rule is ``tiers.rule``):

1. **edge**: the in-process engine (a service whose ladder starts at a small, fast model)
   decides first.  It always answers; its decision also fixes the priority class and so the
   budget (``budget_s`` may shorten the class budget, never lengthen it, as in the engine).
2. **remote**: then, with ``remaining = deadline - now``:

   - the remote's circuit breaker must allow a call (open: ``remote_breaker_open``, no call,
     no wait);
   - the remote's round-trip estimate (``RoundTripEstimate``: a high quantile of its recent
     round trips, seeded by ``prior``) plus ``margin`` must fit in ``remaining``
     (otherwise ``remote_skipped_budget``);
   - the call carries ``remaining - margin`` as its budget on the wire (so the server plans
     to answer with ``margin`` to spare for the trip back) and ``remaining`` as the client
     timeout: the caller never waits past the deadline for it;
   - the answer is used only when it arrived by the deadline (else ``remote_late``) and came
     from the remote's first rung (else ``remote_fallback``, unless ``accept_fallback``).
     Any failure of the call is ``remote_error`` (by error code in ``statistics()``); no
     remote problem is raised to the caller.

Two engines, one rule:

* ``TieredEngine`` (blocking ``Client``): the owner thread waits for the remote.  While it
  waits it decides nothing else, so a caller that serves many requests from one thread sees
  every decision queued behind a remote call (head-of-line blocking: benchmarks/tiers.py
  measures it).  For a caller that makes one decision at a time.
* ``AsyncTieredEngine`` (``AsyncClient``): the edge decides synchronously on the event loop,
  then the remote call is awaited, so the loop keeps deciding other requests while calls are
  out.  For a server or any caller with concurrent requests.

Not done: sending the remote call *before* the edge decides, to overlap them.  The edge
decides in ~10 µs against remote round trips of hundreds; the overlap would save a few
percent of the remote path and cost a call decided before the edge fixed the class.

Threading: like ``Engine``, each belongs to one owner (the edge engine's thread, or the
event loop running on it).  A blocking ``Client`` may be shared with other threads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Protocol

from tailguard.client import AsyncClient, Client, ClientError, Result
from tailguard.clock import Clock
from tailguard.engine import Engine
from tailguard.resilience.breaker import CircuitBreaker
from tailguard.service import Service
from tailguard.tiers.config import RemoteTierConfig
from tailguard.tiers.decision import TieredDecision
from tailguard.tiers.rule import PendingCall, TierRule

__all__ = ["AsyncRemotePredictor", "AsyncTieredEngine", "RemotePredictor", "TieredEngine"]


class RemotePredictor(Protocol):
    """What ``TieredEngine`` needs of the remote tier: ``tailguard.client.Client.predict``."""

    def predict(
        self, keys: Any, context: Mapping[str, Any] | None = None, *, priority: str | None = None,
        budget_us: int | None = None, timeout_s: float | None = None,
    ) -> Result:
        """Decide remotely within ``budget_us`` (wire budget); give up after ``timeout_s``."""
        ...


class AsyncRemotePredictor(Protocol):
    """What ``AsyncTieredEngine`` needs: ``tailguard.client.AsyncClient.predict``."""

    async def predict(
        self, keys: Any, context: Mapping[str, Any] | None = None, *, priority: str | None = None,
        budget_us: int | None = None, timeout_s: float | None = None,
    ) -> Result:
        """Decide remotely within ``budget_us`` (wire budget); give up after ``timeout_s``."""
        ...


def _client_options(config: RemoteTierConfig) -> dict[str, Any]:
    if not config.endpoints:
        raise ValueError("RemoteTierConfig.endpoints is empty: nothing to connect to")
    return {"pool_size": config.pool_size, "connect_timeout_s": float(config.connect_timeout_s)}


class TieredEngine(TierRule):
    """An edge engine plus a remote tier behind a breaker, blocking (see the module docstring).

    ``edge``: the in-process ``Engine`` (or a ``Service``, whose engine is used).  ``remote``:
    a ``Client`` (or anything with its ``predict``).  ``config``: the knobs
    (``RemoteTierConfig``).  ``clock``: the time deadlines are judged on (tests inject a
    ``FakeClock``).  ``breaker``: a ready breaker instead of one built from the config.
    ``owns_remote``: ``close()`` closes ``remote``.
    """

    def __init__(self, edge: Engine | Service, remote: RemotePredictor,
                 config: RemoteTierConfig | None = None, *, clock: Clock | None = None,
                 breaker: CircuitBreaker | None = None, owns_remote: bool = False) -> None:
        super().__init__(edge, config, clock=clock, breaker=breaker)
        self.remote = remote
        self._owns_remote = owns_remote

    @classmethod
    def connect(cls, edge: Engine | Service, config: RemoteTierConfig, *, clock: Clock | None = None,
                client_id: str = "tiers") -> TieredEngine:
        """A tiered engine whose remote is a new ``Client`` to ``config.endpoints``, its pools
        opened now (a tight budget has no room for a TCP handshake; a remote that cannot be
        reached now is not an error: the breaker and the client's health checks deal with it).
        ``close()`` closes the client."""
        client = Client(list(config.endpoints), client_id=client_id, **_client_options(config))
        with contextlib.suppress(ClientError):
            client.connect()
        return cls(edge, client, config, clock=clock, owns_remote=True)

    def predict(self, keys: Any, context: Mapping[str, Any] | None = None, *, priority: str | None = None,
                budget_s: float | None = None) -> TieredDecision:
        """Decide for one entity, as ``Engine.predict`` (same arguments, same errors for bad
        input), consulting the remote tier when the rule allows.  Never raises for a remote
        problem.  Blocks the calling thread while the remote call is out."""
        call = self._begin(keys, context, priority, budget_s)
        if not isinstance(call, PendingCall):
            return call
        try:
            r = self.remote.predict(keys, context, priority=call.decision.priority, budget_us=call.budget_us,
                                    timeout_s=call.timeout_s)
        except Exception as exc:  # never raise a remote problem to the caller
            return self._failed(call, exc)
        except BaseException:
            self._abandoned(call)
            raise
        return self._answered(call, r)

    def close(self) -> None:
        """Close the remote client when this engine owns it (``connect``); the edge engine
        belongs to its service, which closes it."""
        close = getattr(self.remote, "close", None)
        if self._owns_remote and close is not None:
            close()

    def __enter__(self) -> TieredEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTieredEngine(TierRule):
    """An edge engine plus a remote tier behind a breaker, on an event loop: the remote call
    is awaited, so other decisions proceed meanwhile.  Arguments as ``TieredEngine``'s, with
    an ``AsyncClient`` (or anything with its ``predict``) as ``remote``."""

    def __init__(self, edge: Engine | Service, remote: AsyncRemotePredictor,
                 config: RemoteTierConfig | None = None, *, clock: Clock | None = None,
                 breaker: CircuitBreaker | None = None, owns_remote: bool = False) -> None:
        super().__init__(edge, config, clock=clock, breaker=breaker)
        self.remote = remote
        self._owns_remote = owns_remote

    @classmethod
    async def connect(cls, edge: Engine | Service, config: RemoteTierConfig, *, clock: Clock | None = None,
                      client_id: str = "tiers") -> AsyncTieredEngine:
        """As ``TieredEngine.connect``, with a new ``AsyncClient`` owned by the running loop."""
        client = AsyncClient(list(config.endpoints), client_id=client_id, **_client_options(config))
        with contextlib.suppress(ClientError):
            await client.connect()
        return cls(edge, client, config, clock=clock, owns_remote=True)

    async def predict(self, keys: Any, context: Mapping[str, Any] | None = None, *,
                      priority: str | None = None, budget_s: float | None = None) -> TieredDecision:
        """As ``TieredEngine.predict``; the edge decides before the first ``await``, then the
        remote call (if any) is awaited.  Cancelling the task cancels the call (uncounted)."""
        call = self._begin(keys, context, priority, budget_s)
        if not isinstance(call, PendingCall):
            return call
        try:
            r = await self.remote.predict(keys, context, priority=call.decision.priority,
                                          budget_us=call.budget_us, timeout_s=call.timeout_s)
        except Exception as exc:  # never raise a remote problem to the caller
            return self._failed(call, exc)
        except BaseException:  # cancelled: the caller no longer wants the decision
            self._abandoned(call)
            raise
        return self._answered(call, r)

    async def aclose(self) -> None:
        """Close the remote client when this engine owns it (``connect``)."""
        aclose = getattr(self.remote, "aclose", None)
        if self._owns_remote and aclose is not None:
            await aclose()

    async def __aenter__(self) -> AsyncTieredEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
