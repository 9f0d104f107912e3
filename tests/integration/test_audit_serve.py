"""A server logging every decision: after a graceful stop the log verifies, holds every
answered request and replays bit for bit (the commands a user runs); after kill -9 the log
written so far still verifies, and the restarted server logs on beside it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from rawclient import CTX, RawClient

from tailguard.audit.verify import read_entries, segments, verify
from tailguard.schema.wire import Status
from tailguard.serve.process import ServerProcess


def tailguard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tailguard", *args], capture_output=True, text=True)


def test_a_served_decision_log_verifies_and_replays(toy_dir: Path, tmp_path: Path) -> None:
    key, audit = tmp_path / "key", tmp_path / "audit"
    assert tailguard("audit", "keygen", str(key)).returncode == 0
    with ServerProcess.start(toy_dir, "--tcp", "127.0.0.1:0", "--audit-dir", str(audit),
                             "--audit-key-file", str(key)) as proc:
        assert proc.tcp is not None
        c = RawClient(proc.tcp)
        ok = sum(c.request(i, f"k{i % 7}", context=CTX).status == Status.OK for i in range(40))
        assert c.request(99, ["a", "b"], context=CTX, batch=True).status == Status.OK
        proc.terminate()
        assert proc.wait(30) == 0
    (worker_dir,) = list(audit.iterdir())
    v = tailguard("audit", "verify", str(worker_dir), "--key-file", str(key), "--service", "toy", "--json")
    report = json.loads(v.stdout)
    assert v.returncode == 0 and report["ok"] and report["records"] >= ok + 1 and report["warnings"] == []
    r = tailguard("audit", "replay", str(worker_dir), str(toy_dir), "--key-file", str(key), "--json")
    replayed = json.loads(r.stdout)
    assert r.returncode == 0 and replayed["ok"] and replayed["equal"] >= ok


def test_verify_exits_non_zero_and_names_the_bad_entry(toy_dir: Path, tmp_path: Path) -> None:
    key, audit = tmp_path / "key", tmp_path / "audit"
    tailguard("audit", "keygen", str(key))
    with ServerProcess.start(toy_dir, "--tcp", "127.0.0.1:0", "--audit-dir", str(audit),
                             "--audit-key-file", str(key), "--audit-fsync-ms", "0") as proc:
        assert proc.tcp is not None
        c = RawClient(proc.tcp)
        for i in range(5):
            c.request(i, "a", context=CTX)
        proc.terminate()
        proc.wait(30)
    (worker_dir,) = list(audit.iterdir())
    seg = sorted(worker_dir.iterdir())[0]
    _, offset, _, _ = list(read_entries(seg))[3]
    data = bytearray(seg.read_bytes())
    data[offset + 6] ^= 0xFF  # inside the fourth entry's payload
    seg.write_bytes(bytes(data))
    v = tailguard("audit", "verify", str(worker_dir), "--key-file", str(key))
    assert v.returncode == 1 and f"entry 3 at byte {offset}" in v.stdout and "MAC mismatch" in v.stdout


def _records_written(directory: Path) -> int:
    """Entries on disk past each segment's header (the records of a log with no checkpoint yet)."""
    return sum(len(list(read_entries(p))) - 1 for p in segments(directory)) if directory.exists() else 0


def test_after_kill_9_the_log_verifies_and_a_restarted_server_logs_beside_it(
    toy_dir: Path, tmp_path: Path
) -> None:
    key, audit = tmp_path / "key", tmp_path / "audit"
    assert tailguard("audit", "keygen", str(key)).returncode == 0
    args = ("--tcp", "127.0.0.1:0", "--audit-dir", str(audit), "--audit-key-file", str(key),
            "--audit-fsync-ms", "0")
    with ServerProcess.start(toy_dir, *args) as proc:
        assert proc.tcp is not None
        c = RawClient(proc.tcp)
        ok = sum(c.request(i, f"k{i % 5}", context=CTX).status == Status.OK for i in range(30))
        first = audit / str(proc.workers[0] if proc.workers else proc.pid)
        deadline = time.monotonic() + 20
        while _records_written(first) < ok and time.monotonic() < deadline:  # the side path writes
            time.sleep(0.01)
        proc.kill()
        proc.wait(30)
    crashed = verify(first, key.read_bytes(), "toy")
    assert crashed.ok and crashed.records == ok == 30, crashed.as_dict()
    with ServerProcess.start(toy_dir, *args) as again:
        assert again.tcp is not None
        c = RawClient(again.tcp)
        assert all(c.request(i, "k1", context=CTX).status == Status.OK for i in range(5))
        again.terminate()
        assert again.wait(30) == 0
    logs = sorted(audit.iterdir())
    assert len(logs) == 2
    reports = [verify(d, key.read_bytes(), "toy") for d in logs]
    assert all(r.ok for r in reports) and sorted(r.records for r in reports) == [5, 30]
