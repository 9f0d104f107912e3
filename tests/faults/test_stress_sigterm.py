"""``tailguard stress`` stopped by SIGTERM (a CI timeout, ``kill``) stops what it started."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from stresskit import KEYS
from toyservice import CTX

from tailguard.stress.target import Target


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parents[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - out
        out |= frontier
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_stops_the_replicas_the_run_started(stress_target: Target, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "tailguard.stress", "worker-kill", "--service",
           str(stress_target.service_dir), "--keys", ",".join(KEYS), "--context", json.dumps(CTX),
           "--seconds", "120", "--out", str(tmp_path / "report")]
    log = tmp_path / "stress.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=out)
    try:
        deadline = time.monotonic() + 90
        started: set[int] = set()
        while time.monotonic() < deadline and proc.poll() is None:
            started = {p for p in descendants(proc.pid)
                       if b"tailguard.stress.chaos" in Path(f"/proc/{p}/cmdline").read_bytes()}
            if len(started) >= 2:
                break
            time.sleep(0.2)
        assert len(started) >= 2, f"the two replicas never started: {log.read_text()[-3000:]}"
        below = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(alive(p) for p in below):
            time.sleep(0.1)
        left = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:200] for p in below if alive(p)}
        assert not left, f"processes the run started outlived it: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
