"""Clients of tailguard's binary protocol (docs/protocol.md): blocking and asyncio.

    from tailguard.client import Client, HedgePolicy

    with Client(["10.0.0.1:7070", "10.0.0.2:7070"], hedge=HedgePolicy()) as client:
        r = client.predict("AAPL", {"bid": 99.99, "ask": 100.01}, budget_us=2_000)
        r.outputs["p_up"], r.rung, r.model_version, r.endpoint, r.hedge_won

    async with AsyncClient("unix:///run/tailguard.sock") as client:
        r = await client.predict_batch(["AAPL", "MSFT"], {"bid": [1.0, 2.0], "ask": [1.1, 2.1]})

Both clients pool connections per endpoint (connecting lazily, with a handshake), carry the
budget on the wire (the client timeout defaults to the budget plus a margin), balance
across endpoints by the power of two choices (``Balance.P2C``, the default: of two random up
endpoints, the one whose latency estimate, a peak EWMA of observed replies, times its
copies in flight is lower), fail over across endpoints (connect failures, lost connections,
draining servers and retryable statuses; idempotent requests only where the server may have
acted), mark failed endpoints down, eject outliers (``eject_after`` consecutive server
failures, lost connections or timeouts; never the last endpoint up), health-check them
with ``Ping`` before readmitting them, and optionally hedge slow requests.
``client.endpoint_stats()`` shows what balancing sees (``EndpointStats``).  ``Client`` is
thread-safe (share one); ``AsyncClient`` belongs to one event loop.

Errors: ``ClientError`` and its subclasses (see ``tailguard.client._errors`` for the tree).
"""

from tailguard.client._async import AsyncClient
from tailguard.client._core import COUNTERS
from tailguard.client._endpoint import Endpoint, Transport
from tailguard.client._errors import (
    ClientError,
    ConnectFailed,
    ConnectionLost,
    InvalidRequest,
    Rejected,
    ServerFailed,
    Timeout,
    Unavailable,
)
from tailguard.client._health import Balance, EndpointState
from tailguard.client._hedge import HedgePolicy
from tailguard.client._load import EndpointStats
from tailguard.client._result import BatchResult, Result
from tailguard.client._sync import Client

__all__ = [
    "AsyncClient",
    "Balance",
    "BatchResult",
    "COUNTERS",
    "Client",
    "ClientError",
    "ConnectFailed",
    "ConnectionLost",
    "Endpoint",
    "EndpointState",
    "EndpointStats",
    "HedgePolicy",
    "InvalidRequest",
    "Rejected",
    "Result",
    "ServerFailed",
    "Timeout",
    "Transport",
    "Unavailable",
]
