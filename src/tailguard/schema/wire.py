"""The binary protocol's messages: msgpack arrays (msgspec ``array_like`` structs), tagged.

Every frame after the 4-byte length prefix is one msgpack array whose first element is the
message tag.  Field order is the wire order: new fields are only ever appended, with a
default, so an older peer can still decode a newer message (``docs/protocol.md``).

Client -> server: ``Hello`` (first frame only), then ``Request`` and ``Ping``.
Server -> client: ``Welcome`` (or ``Refused``), then ``Reply``, ``Pong`` and ``Notice``.

Durations on the wire are integers: budgets in µs (``budget_us``), server timings in ns.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

__all__ = [
    "MAGIC",
    "PROTOCOL_VERSIONS",
    "TIMING_NAMES",
    "ClientMessage",
    "Hello",
    "Notice",
    "Ping",
    "Pong",
    "Refused",
    "Reply",
    "Request",
    "ServerMessage",
    "Status",
    "Welcome",
]

MAGIC = "tailguard"
#: Protocol versions this build speaks, oldest first.
PROTOCOL_VERSIONS = (1,)
#: Order of ``Reply.timings_ns``: time queued, the engine's four stages, then server total
#: (from the frame's arrival to the reply being handed to the socket).
TIMING_NAMES = ("queue", "ingest", "features", "inference", "delivery", "server_total")


class Status(enum.IntEnum):
    """A reply's stable status.  ``code`` is the string used in errors, metrics and logs.

    0-9 answered, 10-19 the request is wrong (do not retry as is), 20-29 the server would not
    take it now (retry after ``retry_after_us``, elsewhere if it is draining), 30-39 the
    server failed (retry if idempotent).
    """

    OK = 0
    INVALID_REQUEST = 10
    UNKNOWN_PRIORITY = 11
    UNKNOWN_MODEL = 12
    FEATURE_ERROR = 13
    FRAME_TOO_LARGE = 14
    MALFORMED = 15
    UNSUPPORTED_VERSION = 16
    QUEUE_FULL = 20
    RATE_LIMITED = 21
    PREDICTED_LATE = 22
    EXPIRED = 23
    SHED_OVERLOAD = 24
    DRAINING = 25
    MODEL_ERROR = 30
    BUDGET_EXHAUSTED = 31
    INTERNAL = 32

    @property
    def code(self) -> str:
        """The stable lower-case code, e.g. ``"queue_full"``."""
        return self.name.lower()

    @property
    def retryable(self) -> bool:
        """Whether the same request may be sent again (after ``retry_after_us``)."""
        return self >= 20


class Hello(msgspec.Struct, array_like=True, tag=1, forbid_unknown_fields=False):
    """The client's first frame: the magic string, the versions it speaks, who it is."""

    magic: str
    versions: list[int]
    client_id: str = ""


class Welcome(msgspec.Struct, array_like=True, tag=2):
    """The server's answer to ``Hello``: the chosen version and what the service looks like."""

    version: int
    server: str
    service: str
    max_frame: int
    worker: int
    entities: list[str]
    context: list[str]
    outputs: list[str]
    rungs: list[str]
    priorities: list[str]
    model_version: str


class Refused(msgspec.Struct, array_like=True, tag=3):
    """The handshake failed (wrong magic, no common version); the server closes after it."""

    status: int
    error: str


class Request(msgspec.Struct, array_like=True, tag=4, gc=False, omit_defaults=True):
    """One decision request.  ``id`` is chosen by the client, unique among its in-flight
    requests on the connection; the reply carries it back (replies may come out of order).

    ``keys``: one entity key (or ``{entity: key}``); with ``batch`` a list of keys (or
    ``{entity: [keys]}``).  ``context``: request-time inputs by name, scalars (or lists of
    one value per row with ``batch``).  ``priority``: a class name ("" = the service default).
    ``budget_us``: may shorten the class budget, never lengthen it (0 = the class budget).
    ``model``: "" or the service name; ``version``: "" or the primary model version the
    client insists on.  ``idempotent``: the client may resend it elsewhere after a failure.
    """

    id: int
    keys: Any = None
    context: dict[str, Any] | None = None
    priority: str = ""
    budget_us: int = 0
    client_id: str = ""
    batch: bool = False
    model: str = ""
    version: str = ""
    idempotent: bool = True
    traceparent: str = ""


class Ping(msgspec.Struct, array_like=True, tag=5):
    """A liveness probe; answered by ``Pong`` with the same id, ahead of queued work."""

    id: int


class Reply(msgspec.Struct, array_like=True, tag=6, gc=False, omit_defaults=True):
    """The answer to ``Request`` ``id``.

    ``outputs`` is row-major, ``rows`` rows of ``len(Welcome.outputs)`` values.  ``rungs``
    and ``flags`` hold one entry per row: the ladder rung index (names in ``Welcome.rungs``)
    and the decision flag bits (``tailguard.Flag``).  ``timings_ns`` follows
    ``TIMING_NAMES``.  On a non-OK status, ``error`` says why and ``field`` names the
    offending request field when there is one.
    """

    id: int
    status: int
    outputs: list[float] = []
    rows: int = 0
    model_version: str = ""
    rungs: list[int] = []
    flags: list[int] = []
    timings_ns: list[int] = []
    retry_after_us: int = 0
    error: str = ""
    field: str = ""


class Pong(msgspec.Struct, array_like=True, tag=7):
    """The answer to ``Ping``: the server's state (``ready``/``draining``) and queue depth."""

    id: int
    state: str
    queued: int


class Notice(msgspec.Struct, array_like=True, tag=8):
    """Unsolicited server news: ``draining`` means send no new requests on this connection."""

    state: str


ClientMessage = Hello | Request | Ping
ServerMessage = Welcome | Refused | Reply | Pong | Notice
