"""Replaying recorded requests through a real server: the recorded pacing divided by the speed,
every record's status and comparison, outputs bit for bit when the server serves the recorded
model, differences named by record; the context the record lacks is given by the caller."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from toyservice import CTX

from tailguard import Service
from tailguard.audit.log import AuditLog
from tailguard.audit.resend import _pii_replaced, intended_offsets_ns, resend
from tailguard.audit.verify import segments
from tailguard.errors import TailguardError
from tailguard.serve.process import ServerProcess
from tailguard.testing import FakeClock

KEY = bytes(range(32))
GAP_S = 0.02


@pytest.fixture(scope="module")
def server(toy_dir: Path) -> Iterator[ServerProcess]:
    with ServerProcess.start(toy_dir, "--tcp", "127.0.0.1:0") as proc:
        yield proc


@pytest.fixture
def target(server: ServerProcess) -> str:
    assert server.tcp is not None
    return f"tcp://{server.tcp}"


@pytest.fixture
def recorded(service: Service, clock: FakeClock, tmp_path: Path) -> Path:
    """Ten single decisions GAP_S apart and one batch, at the bulk priority (20 ms budget, so
    the server's primary model answers even on a busy machine)."""
    log = AuditLog(tmp_path / "audit", KEY, service.spec.name, service.engine, fsync_interval_s=0)
    service.engine.set_hooks([*service.engine.hooks, log])
    for i in range(10):
        service.engine.predict(f"k{i}", CTX, priority="bulk")
        clock.advance(GAP_S)
    service.engine.predict_batch(["a", "b", "c"], CTX, priority="bulk")
    log.close()
    return log.directory


def test_due_times_are_the_recorded_gaps_divided_by_the_speed() -> None:
    mono = [5_000, 6_000, 8_000, 7_000, 9_000]  # the 4th went backwards: no gap
    assert intended_offsets_ns(mono, 1.0) == [0, 1_000, 3_000, 3_000, 5_000]
    assert intended_offsets_ns(mono, 2.0) == [0, 500, 1_500, 1_500, 2_500]
    assert intended_offsets_ns(mono, 0.0) == [0, 0, 0, 0, 0]
    with pytest.raises(ValueError):
        intended_offsets_ns(mono, -1.0)


def test_keys_replaced_by_the_pii_policy_are_recognised() -> None:
    assert _pii_replaced("pii1:0011:abcd") and _pii_replaced(None) and _pii_replaced({"user": ["a", None]})
    assert not _pii_replaced("AAPL") and not _pii_replaced(["a", "b"]) and not _pii_replaced(7)


def test_recorded_requests_reproduce_bit_for_bit_on_the_recorded_model(recorded: Path, target: str) -> None:
    report = resend(recorded, KEY, target, speed=0, context=CTX, max_in_flight=1)
    out = report.as_dict()
    assert out["ok"] and out["records"] == 11 and out["statuses"] == {"ok": 11}
    assert (out["equal"], out["different"], out["other_version"]) == (11, 0, 0)
    assert set(out["latency_s"]) == {"p50", "p90", "p99", "p999", "max"} and out["not_equal"] == []


def test_a_changed_input_is_reported_as_a_difference_naming_the_record(recorded: Path, target: str) -> None:
    report = resend(recorded, KEY, target, speed=0, context={"price": 1e6, "size": 0.001})
    assert not report.ok and report.count("different") == 11
    first = report.outcomes[0]
    assert (first.seq, first.status, first.compared) == (0, "ok", "different") and "recorded" in first.reason


def test_the_recorded_pace_is_kept(recorded: Path, target: str) -> None:
    report = resend(recorded, KEY, target, speed=2.0, context=CTX)
    # A lower bound only: nothing is sent before it is due, whatever the machine's speed.
    assert report.ok and report.elapsed_s >= 10 * GAP_S / 2.0


def test_without_the_context_every_record_is_refused_and_not_compared(recorded: Path, target: str) -> None:
    report = resend(recorded, KEY, target, speed=0)
    assert report.statuses == {"invalid_request": 11} and report.count("not_compared") == 11
    assert not report.ok and "context" in report.outcomes[0].reason


def test_every_record_is_reported_in_log_order(recorded: Path, target: str) -> None:
    detail = resend(recorded, KEY, target, speed=0, context=CTX).as_dict(per_record=True)["records_detail"]
    assert [d["seq"] for d in detail] == list(range(11)) and all(d["compared"] == "equal" for d in detail)


def test_a_log_that_does_not_verify_is_not_replayed(recorded: Path, target: str) -> None:
    seg = segments(recorded)[0]
    data = bytearray(seg.read_bytes())
    data[40] ^= 0xFF
    seg.write_bytes(bytes(data))
    with pytest.raises(TailguardError, match="does not verify"):
        resend(recorded, KEY, target, context=CTX)


def test_the_replay_to_command(recorded: Path, target: str, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_bytes(KEY)
    r = subprocess.run([sys.executable, "-m", "tailguard", "audit", "replay", str(recorded), "--key-file",
                        str(key), "--to", target, "--speed", "0", "--context", json.dumps(CTX), "--json"],
                       capture_output=True, text=True)
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["equal"] == 11 and out["target"] == target
