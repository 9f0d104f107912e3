"""Start ``tailguard serve`` as a child process and find where it listens (tests, benchmarks).

``ServerProcess.start(service_dir, "--tcp", "127.0.0.1:0", ...)`` runs the real command with
a ready file, waits until the server writes it (every worker is serving), and exposes the
bound addresses.  ``terminate`` sends SIGTERM (graceful drain), ``kill`` SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["ServerProcess", "wait_ready"]


def wait_ready(proc: subprocess.Popen[bytes], ready: Path, timeout_s: float) -> str | None:
    """Wait until the server ``proc`` writes its ready file ``ready``: None once it has, else
    why not — ``"exited"`` or ``"timeout"``.  A server that did not get ready, or whose wait
    was interrupted (Ctrl-C, a SIGTERM turned into an exception), is killed: never left
    behind."""
    end = time.monotonic() + timeout_s
    try:
        while not ready.exists():
            if proc.poll() is not None:
                return "exited"
            if time.monotonic() > end:
                proc.kill()
                proc.wait()
                return "timeout"
            time.sleep(0.02)  # waiting for a process to start, not racing anything
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return None


class ServerProcess:
    """A running ``tailguard serve`` child process."""

    def __init__(self, proc: subprocess.Popen[bytes], workdir: Path, info: dict[str, Any]) -> None:
        self.proc = proc
        self.workdir = workdir
        self.info = info

    @classmethod
    def start(cls, service_dir: str | Path, *args: str, ready_timeout_s: float = 60.0,
              env: dict[str, str] | None = None) -> ServerProcess:
        """Run ``tailguard serve service_dir *args`` and wait until it is ready."""
        workdir = Path(tempfile.mkdtemp(prefix="tailguard-serve-"))
        ready = workdir / "ready.json"
        log = (workdir / "server.log").open("wb")
        cmd = [sys.executable, "-m", "tailguard", "serve", str(service_dir), *args,
               "--ready-file", str(ready)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        log.close()
        why = wait_ready(proc, ready, ready_timeout_s)
        if why == "exited":
            raise RuntimeError(f"tailguard serve exited with {proc.returncode}:\n{cls._tail(workdir)}")
        if why is not None:
            raise TimeoutError(f"tailguard serve not ready after {ready_timeout_s} s:\n{cls._tail(workdir)}")
        return cls(proc, workdir, json.loads(ready.read_text()))

    @staticmethod
    def _tail(workdir: Path) -> str:
        try:
            return (workdir / "server.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    # -- where it listens ------------------------------------------------------------------------
    @property
    def tcp(self) -> str | None:
        """``host:port`` of the binary protocol over TCP, if served."""
        return self.info.get("tcp")

    @property
    def unix(self) -> str | None:
        """Path of the binary protocol's Unix socket, if served."""
        return self.info.get("unix")

    @property
    def http(self) -> str | None:
        """``host:port`` of HTTP, if served."""
        return self.info.get("http")

    @property
    def pid(self) -> int:
        """The server (supervisor) process id."""
        return self.proc.pid

    @property
    def workers(self) -> list[int]:
        """Worker process ids as of the last ready-file write."""
        return list(self.info.get("workers", []))

    def refresh(self) -> dict[str, Any]:
        """Re-read the ready file (the supervisor rewrites it after restarting a worker)."""
        self.info = json.loads((self.workdir / "ready.json").read_text())
        return self.info

    def log(self) -> str:
        """What the server printed so far."""
        return self._tail(self.workdir)

    # -- stopping --------------------------------------------------------------------------------
    def terminate(self) -> None:
        """SIGTERM: drain and exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL."""
        if self.proc.poll() is None:
            self.proc.kill()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for exit; the return code."""
        return self.proc.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Terminate, wait, and kill if it does not exit in ``timeout`` seconds."""
        self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
