"""The client's exception tree, mapped from wire statuses and transport failures.

Every error the client raises on purpose is a ``ClientError`` (itself a
``tailguard.TailguardError``), with the wire ``status`` when a server sent one, a stable
string ``code`` (``Status.code``, or a client-side code below), ``retry_after_s`` (seconds,
0.0 when the server gave none), the offending request ``field`` and the ``endpoint`` that
answered::

    ClientError                 code of the status, or one of the client codes below
    ├── InvalidRequest          status 10-19: the request is wrong; never retried as is
    ├── Rejected                status 20-29: not taken now (queue full, rate limited, draining...)
    ├── ServerFailed            status 30-39 (and unknown >= 40): the server failed to answer
    ├── ConnectionLost          "connection_lost": the connection closed with the request in flight
    ├── ConnectFailed           "connect_failed": connect or handshake failed (incl. ``Refused``)
    ├── Timeout                 "timeout": no reply within the client-side timeout (a TimeoutError)
    └── Unavailable             "unavailable": no endpoint could be reached (a ConnectionError)

Socket errors (``OSError``) and msgspec errors are translated into this tree at the
client's transport boundary; the original is kept as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Sequence

from tailguard.errors import TailguardError
from tailguard.schema.wire import Reply, Status

__all__ = [
    "ClientError",
    "ConnectFailed",
    "ConnectionLost",
    "InvalidRequest",
    "Rejected",
    "ServerFailed",
    "Timeout",
    "Unavailable",
    "error_from_reply",
    "error_from_status",
    "status_of",
]


class ClientError(TailguardError):
    """Base of every client error.  ``status`` is the wire status (None for client-side
    errors), ``number`` its integer (kept even when this build does not know it), ``code``
    the stable string code, ``retry_after_s`` the server's hint in seconds."""

    code = "client_error"
    #: Whether a given ``status`` sets ``code`` (False: the class's own code always holds).
    _code_from_status = True

    def __init__(
        self,
        message: str,
        *,
        status: Status | None = None,
        number: int = -1,
        code: str = "",
        retry_after_s: float = 0.0,
        field: str = "",
        endpoint: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.number = int(status) if status is not None and number < 0 else number
        if code:
            self.code = code
        elif status is not None and self._code_from_status:
            self.code = status.code
        self.retry_after_s = retry_after_s
        self.field = field
        self.endpoint = endpoint


class InvalidRequest(ClientError):
    """Status 10-19: the request is wrong (bad input, unknown priority, too large...)."""

    code = "invalid_request"


class Rejected(ClientError):
    """Status 20-29: the server would not take the request now; it was not executed."""

    code = "rejected"


class ServerFailed(ClientError):
    """Status 30-39 (or an unknown status >= 40): the server failed while answering."""

    code = "internal"


class ConnectionLost(ClientError):
    """The connection closed while the request was in flight; the outcome is unknown, so
    the request was not retried (it is not idempotent, or no retry or time was left)."""

    code = "connection_lost"


class ConnectFailed(ClientError):
    """Connecting or the handshake failed: refused, timed out, or the server sent ``Refused``
    (then ``status`` says why, e.g. ``UNSUPPORTED_VERSION``)."""

    code = "connect_failed"
    _code_from_status = False


class Timeout(ClientError, TimeoutError):
    """No reply arrived within the client-side timeout (the budget plus a margin)."""

    code = "timeout"


class Unavailable(ClientError, ConnectionError):
    """No endpoint could be reached or admitted.  ``errors`` holds each endpoint's failure;
    ``retry_after_s`` says when the next down endpoint is due for a health check."""

    code = "unavailable"

    def __init__(
        self, message: str, *, errors: Sequence[ClientError] = (), retry_after_s: float = 0.0
    ) -> None:
        detail = "; ".join(f"{e.endpoint or '?'}: {e}" for e in errors)
        super().__init__(f"{message} ({detail})" if detail else message, retry_after_s=retry_after_s)
        self.errors = list(errors)


def status_of(number: int) -> Status | None:
    """The ``Status`` for a wire number, or None when this build does not know it."""
    try:
        return Status(number)
    except ValueError:
        return None


def error_from_status(
    number: int, message: str, *, retry_after_us: int = 0, field: str = "", endpoint: str = ""
) -> ClientError:
    """The ``ClientError`` subclass for a non-OK wire status number (by range)."""
    status = status_of(number)
    cls: type[ClientError]
    if 10 <= number < 20:
        cls = InvalidRequest
    elif 20 <= number < 30:
        cls = Rejected
    else:
        cls = ServerFailed
    code = status.code if status is not None else f"status_{number}"
    return cls(
        message or code,
        status=status,
        number=number,
        code=code,
        retry_after_s=retry_after_us / 1e6,
        field=field,
        endpoint=endpoint,
    )


def error_from_reply(reply: Reply, endpoint: str) -> ClientError:
    """The error a non-OK ``Reply`` maps to, naming the endpoint that sent it."""
    return error_from_status(
        reply.status, reply.error, retry_after_us=reply.retry_after_us, field=reply.field, endpoint=endpoint
    )
