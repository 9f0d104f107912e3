"""A private ``redis-server`` for a benchmark: a free loopback port, no persistence, killed at exit.

The same start discipline as ``tests/services.py``'s ``RedisServer`` (a benchmark should not
import the test tree): start the child, poll until it answers PING, SIGKILL and reap it on
``stop``.  Also a raw-socket PING, the floor a Redis read is compared with.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

__all__ = ["RedisServer", "RawPing", "free_port"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One ``redis-server`` child on 127.0.0.1 (``--save "" --appendonly no``), as a context manager."""

    def __init__(self, workdir: Path, binary: str | None = None) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise SystemExit("redis-server not found on PATH (install it, e.g. apt-get install redis-server)")
        self.binary = found
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def addr(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    def version(self) -> str:
        """The server's version string (``redis-server --version``)."""
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, check=False).stdout
        return next((p.split("=", 1)[1] for p in out.split() if p.startswith("v=")), out.strip())

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait until it answers PING (a readiness poll of a child process)."""
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while not self._answers_ping():
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(f"redis-server exited with {code} (port {self.port} taken?)")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING in {timeout_s} s")
            time.sleep(0.01)

    def stop(self) -> None:
        """SIGKILL the server and reap it."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class RawPing:
    """``PING`` over one raw TCP connection (TCP_NODELAY): the round trip with nothing else in it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def __call__(self) -> None:
        """One PING and its ``+PONG`` reply."""
        self.sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        got = self.sock.recv(64)
        while not got.endswith(b"\r\n"):
            got += self.sock.recv(64)

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()
