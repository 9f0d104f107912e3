"""Server replicas for fault scenarios: real ``tailguard serve`` processes on fixed ports.

Each ``Replica`` is one server process (``--workers 1`` by default) started through
``tailguard.stress.chaos`` so that its first-rung model can be made slow or made to raise
(``set_chaos``).  The first start binds port 0; restarts reuse the port the first start got,
so clients that know the address find the replica again.  ``kill`` is ``SIGKILL`` (a crash:
no drain, no goodbye).  Process ids, resident memory and open descriptors are read from
``/proc`` (Linux).

One owner thread per replica (the scenario runner calls ``start``/``kill`` from worker
threads so that its event loop keeps sending).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tailguard.serve.process import ServerProcess, wait_ready
from tailguard.stress.chaos import write_control
from tailguard.stress.problems import StressError

__all__ = ["Replica", "open_fds", "rss_bytes"]


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (0 when it is gone)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def open_fds(pid: int) -> int:
    """Open file descriptors of ``pid`` (0 when it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


class Replica:
    """One ``tailguard serve`` process of a scenario (see the module docstring).

    ``service_dir``: the service; ``extra``: further ``serve`` options (``--online-url``,
    ``--max-frame``...); ``workdir``: where its control file and logs go.
    """

    def __init__(self, service_dir: Path, workdir: Path, extra: tuple[str, ...] = (), *,
                 workers: int = 1, ready_timeout_s: float = 60.0) -> None:
        self.service_dir = service_dir
        self.workdir = workdir
        self.extra = extra
        self.workers = workers
        self.ready_timeout_s = ready_timeout_s
        self.control = workdir / "chaos.json"
        self.port = 0
        self.server: ServerProcess | None = None
        self.starts = 0
        self.kills = 0
        workdir.mkdir(parents=True, exist_ok=True)
        write_control(self.control, "off")

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` (known after the first start)."""
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        """Whether the process runs."""
        return self.server is not None and self.server.proc.poll() is None

    def pids(self) -> list[int]:
        """The server process and its workers (what memory and descriptors are summed over)."""
        if self.server is None or not self.alive:
            return []
        pids = [self.server.pid]
        if self.workers > 1:
            with contextlib.suppress(OSError, ValueError):
                pids += [p for p in self.server.refresh().get("workers", []) if p != self.server.pid]
        return pids

    def rss_bytes(self) -> int:
        """Resident memory of the replica's processes, summed."""
        return sum(rss_bytes(p) for p in self.pids())

    def open_fds(self) -> int:
        """Open descriptors of the replica's processes, summed."""
        return sum(open_fds(p) for p in self.pids())

    def start(self) -> None:
        """Start the server and wait until it serves (same port as before after the first)."""
        if self.alive:
            return
        log_dir = Path(tempfile.mkdtemp(prefix="serve-", dir=self.workdir))
        ready = log_dir / "ready.json"
        cmd = [sys.executable, "-m", "tailguard.stress.chaos", str(self.control), "serve",
               str(self.service_dir), "--tcp", f"127.0.0.1:{self.port}", "--workers", str(self.workers),
               "--dashboard-interval", "0", "--drain-timeout", "2", *self.extra, "--ready-file", str(ready)]
        with (log_dir / "server.log").open("wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        why = wait_ready(proc, ready, self.ready_timeout_s)
        if why == "exited":
            raise StressError(f"tailguard serve exited with {proc.returncode}:\n"
                              f"{(log_dir / 'server.log').read_text(errors='replace')[-3000:]}")
        if why is not None:
            raise StressError(f"tailguard serve not ready after {self.ready_timeout_s} s")
        self.server = ServerProcess(proc, log_dir, json.loads(ready.read_text()))
        tcp = self.server.tcp or ""
        self.port = int(tcp.rsplit(":", 1)[1])
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL the server process (its workers get SIGTERM from the kernel's death signal)."""
        if self.server is not None and self.alive:
            self.server.kill()
            self.server.wait()
            self.kills += 1

    def restart(self) -> None:
        """``kill`` then ``start`` on the same port."""
        self.kill()
        self.start()

    def set_chaos(self, mode: str, *, factor: float = 10.0, floor_ms: float = 1.0) -> None:
        """Switch the first-rung model's fault (``off``, ``slow``, ``raise``) now."""
        write_control(self.control, mode, factor=factor, floor_ms=floor_ms)
        if self.server is not None and self.alive:
            os.kill(self.server.pid, signal.SIGUSR1)

    def log(self) -> str:
        """The current process's output so far."""
        return self.server.log() if self.server is not None else ""

    def close(self) -> None:
        """Stop the server (SIGTERM, drain, SIGKILL if it lingers)."""
        if self.server is not None:
            self.server.close(timeout=10.0)
            self.server = None
