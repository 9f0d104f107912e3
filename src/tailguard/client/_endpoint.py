"""Endpoint addresses: ``tcp://host:port``, ``host:port``, ``[::1]:port`` or ``unix:///path``.

``Endpoint.parse`` is the only place that reads address strings; everything else holds the
frozen ``Endpoint``, whose ``str()`` is the canonical form reported in results and errors.
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass

__all__ = ["Endpoint", "Transport"]


class Transport(enum.Enum):
    """How an endpoint is reached."""

    TCP = "tcp"
    UNIX = "unix"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One server address.  TCP endpoints have ``host`` and ``port``; Unix ones ``path``."""

    transport: Transport
    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, text: str | Endpoint) -> Endpoint:
        """Parse ``tcp://host:port``, ``host:port``, ``[v6addr]:port`` or ``unix:///path``.

        Raises ``ValueError`` naming the string when it is not one of these forms.
        """
        if isinstance(text, Endpoint):
            return text
        if not isinstance(text, str) or not text:
            raise ValueError(f"endpoint must be a non-empty string, got {text!r}")
        if text.startswith("unix://"):
            path = text[len("unix://"):]
            if not path:
                raise ValueError(f"endpoint {text!r}: a unix endpoint needs a path (unix:///path)")
            return cls(Transport.UNIX, path=path)
        rest = text[len("tcp://"):] if text.startswith("tcp://") else text
        if "://" in rest:
            raise ValueError(f"endpoint {text!r}: unknown scheme (use tcp:// or unix://)")
        host, sep, port_s = rest.rpartition(":")
        if not sep or not host or not port_s.isdigit():
            raise ValueError(f"endpoint {text!r}: expected host:port")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ValueError(f"endpoint {text!r}: put an IPv6 address in brackets, [addr]:port")
        port = int(port_s)
        if not 0 < port < 65536:
            raise ValueError(f"endpoint {text!r}: port {port} is out of range")
        return cls(Transport.TCP, host=host, port=port)

    def __str__(self) -> str:
        if self.transport is Transport.UNIX:
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"

    def open_socket(self, timeout_s: float) -> socket.socket:
        """A connected blocking socket (TCP_NODELAY on TCP), connect bounded by ``timeout_s``.

        Raises ``OSError`` (including ``TimeoutError``) on failure; the caller translates it.
        """
        if self.transport is Transport.UNIX:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout_s)
                sock.connect(self.path)
            except BaseException:
                sock.close()
                raise
            return sock
        sock = socket.create_connection((self.host, self.port), timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
