"""A private ``redis-server`` child process on a free loopback port: for tests, benchmarks and demos.

Not a way to run Redis in production: no persistence (``--save "" --appendonly no``), bound
to 127.0.0.1, ``SIGKILL``\\ed on ``stop`` (no goodbye to clients, as in a crash, which is what
fault tests want).  ``start`` polls until the server answers ``PING`` (a readiness poll of a
child process).  ``stop``/``start`` keep the port, so clients reconnect to the same address.

One owner thread; the object is a context manager (start on enter, stop on exit).
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

__all__ = ["LocalRedis", "free_port"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalRedis:
    """One ``redis-server`` child on 127.0.0.1 (``binary``: its path; ``workdir``: its ``--dir``)."""

    def __init__(self, binary: str, workdir: Path, port: int | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
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
        """Start the server and wait until it answers PING."""
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while not self.answers_ping():
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"redis-server exited with {code} (port {self.port} taken?)")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not answer PING in {timeout_s} s")
            time.sleep(0.01)  # readiness poll of a child process

    def stop(self) -> None:
        """Kill the server (SIGKILL) and reap it."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        """Kill and start again on the same port (empty: no persistence)."""
        self.stop()
        self.start()

    def answers_ping(self) -> bool:
        """True when a fresh connection's inline ``PING`` gets ``+PONG``."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def __enter__(self) -> LocalRedis:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
