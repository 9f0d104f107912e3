"""Real services for tests: a ``redis-server`` on a free loopback port, stoppable and restartable.

``require_binary`` skips a test with a visible reason when a server binary is missing, and
fails it instead when ``TAILGUARD_REQUIRE_SERVICES=1`` (CI sets it), so CI cannot go green
by skipping.  ``RedisServer`` runs without persistence (``--save "" --appendonly no``): a
restart comes back empty, as a crashed cache node would.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

__all__ = ["RedisServer", "free_port", "require_binary"]


def require_binary(name: str) -> str:
    """The path of ``name``; skip (or fail under TAILGUARD_REQUIRE_SERVICES=1) when missing."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} not found on PATH (install it, e.g. apt-get install redis-server)"
        if os.environ.get("TAILGUARD_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason}; TAILGUARD_REQUIRE_SERVICES=1 forbids skipping")
        pytest.skip(reason)
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One ``redis-server`` child process on 127.0.0.1; ``stop``/``start`` keep the port."""

    def __init__(self, binary: str, workdir: Path, port: int | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait until it answers PING (a readiness poll, not a test sleep)."""
        assert self.proc is None, "already running"
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
            time.sleep(0.01)  # readiness poll of a child process, not a race in the code under test

    def stop(self) -> None:
        """Kill the server (SIGKILL: no goodbye to clients, as in a crash) and reap it."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        """Kill and start again on the same port (empty: no persistence)."""
        self.stop()
        self.start()

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False
