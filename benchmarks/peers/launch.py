"""Start a peer server as a child process and wait for the ``HOST:PORT`` it writes to a ready file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

HERE = Path(__file__).resolve().parent


class PeerProcess:
    """A peer server script run as ``python benchmarks/peers/<script> ... --ready-file PATH``."""

    def __init__(self, proc: subprocess.Popen[bytes], workdir: Path, address: str) -> None:
        self.proc = proc
        self.workdir = workdir
        self.address = address

    @classmethod
    def start(cls, script: str, *args: str, ready_timeout_s: float = 60.0) -> PeerProcess:
        workdir = Path(tempfile.mkdtemp(prefix="tailguard-peer-"))
        ready = workdir / "ready"
        log = (workdir / "log").open("wb")
        cmd = [sys.executable, str(HERE / script), *args, "--ready-file", str(ready)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        log.close()
        end = time.monotonic() + ready_timeout_s
        while not ready.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"{script} exited with {proc.returncode}:\n{cls._log(workdir)}")
            if time.monotonic() > end:
                proc.kill()
                raise TimeoutError(f"{script} not ready after {ready_timeout_s} s:\n{cls._log(workdir)}")
            time.sleep(0.02)  # waiting for a process to start
        return cls(proc, workdir, ready.read_text().strip())

    @staticmethod
    def _log(workdir: Path) -> str:
        try:
            return (workdir / "log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def log(self) -> str:
        return self._log(self.workdir)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PeerProcess:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
