"""The off-box copy: a log shipped to a real nats-server (JetStream) is pulled back byte for
byte and verifies with the same key; a NATS outage mid-way and a restarted shipper lose and
duplicate nothing; another log under the same subject is refused; gaps are detected."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import DiscardPolicy, StorageType
from services import NatsServer, running_nats
from toyservice import CTX

from tailguard import Service
from tailguard.audit.log import AuditLog
from tailguard.audit.offbox import AuditShipper, OffboxError, connect
from tailguard.audit.offbox_layout import DEFAULT_STREAM, entries_at, subject_for
from tailguard.audit.pull import pull
from tailguard.audit.verify import segments, verify
from tailguard.client import Client
from tailguard.serve.process import ServerProcess

KEY = bytes(range(32))


@pytest.fixture
def natsd(tmp_path: Path) -> Iterator[NatsServer]:
    with running_nats(tmp_path / "jetstream") as server:
        yield server


@pytest.fixture
def log(service: Service, tmp_path: Path) -> AuditLog:
    """A log rotating every few KiB, fsynced on every drain (so its entries are on disk)."""
    a = AuditLog(tmp_path / "audit" / "w1", KEY, service.spec.name, service.engine,
                 fsync_interval_s=0, segment_bytes=1500)
    service.engine.set_hooks([*service.engine.hooks, a])
    return a


def decide(service: Service, log: AuditLog, n: int) -> None:
    for i in range(n):
        service.engine.predict(f"k{i}", CTX)
        if i % 7 == 0:
            service.engine.predict_batch(["a", "b", "c"], CTX)
        if i % 5 == 4:
            log.drain()  # a segment rotates at the end of a drain
    log.drain()


def shipper(log: AuditLog, natsd: NatsServer, **kw: object) -> AuditShipper:
    return AuditShipper(log.directory, natsd.url, max_message_bytes=1024, poll_interval_s=0.01,
                        backoff_s=0.02, max_backoff_s=0.2, **kw)  # type: ignore[arg-type]


def same_files(a: Path, b: Path) -> bool:
    return [(p.name, p.read_bytes()) for p in segments(a)] == [(p.name, p.read_bytes()) for p in segments(b)]


async def stream_messages(url: str) -> int:
    nc = await connect(url)
    try:
        return (await nc.jetstream().stream_info(DEFAULT_STREAM)).state.messages
    finally:
        await nc.close()


def test_a_shipped_log_is_pulled_back_byte_for_byte_and_verifies(
        service: Service, log: AuditLog, natsd: NatsServer, tmp_path: Path) -> None:
    s = shipper(log, natsd).start()
    decide(service, log, 60)
    log.close()
    assert s.flush(30)
    s.close()
    assert len(segments(log.directory)) > 2 and s.messages > len(segments(log.directory))
    report = pull(natsd.url, "toy", tmp_path / "copy")
    assert report.duplicates == 0 and report.workers["w1"]["messages"] == s.messages
    assert same_files(log.directory, tmp_path / "copy" / "w1")
    v = verify(tmp_path / "copy" / "w1", KEY, "toy")
    assert v.ok and v.warnings == [] and v.records == verify(log.directory, KEY).records


def test_a_nats_outage_mid_way_loses_and_duplicates_nothing(
        service: Service, log: AuditLog, natsd: NatsServer, tmp_path: Path) -> None:
    s = shipper(log, natsd).start()
    decide(service, log, 20)
    assert s.flush(30)
    natsd.kill()
    decide(service, log, 30)  # written while NATS is down: the writer never waits
    natsd.start()
    decide(service, log, 10)
    log.close()
    assert s.flush(30)
    s.close()
    assert s.failures >= 1 and s.connects >= 2
    report = pull(natsd.url, "toy", tmp_path / "copy")
    assert report.duplicates == 0 and asyncio.run(stream_messages(natsd.url)) == s.messages
    assert same_files(log.directory, tmp_path / "copy" / "w1") and verify(tmp_path / "copy" / "w1", KEY).ok


def test_killing_nats_while_a_backlog_is_shipped_loses_and_duplicates_nothing(
        service: Service, log: AuditLog, natsd: NatsServer, tmp_path: Path) -> None:
    decide(service, log, 200)
    log.close()
    s = shipper(log, natsd).start()
    natsd.kill()  # wherever the shipper is: before, between or inside publishes
    natsd.start()
    assert s.flush(30)
    s.close()
    report = pull(natsd.url, "toy", tmp_path / "copy")
    assert report.duplicates == 0 and asyncio.run(stream_messages(natsd.url)) == s.messages - s.duplicates
    assert same_files(log.directory, tmp_path / "copy" / "w1")


def test_a_restarted_shipper_resumes_after_the_last_acknowledged_entry(
        service: Service, log: AuditLog, natsd: NatsServer, tmp_path: Path) -> None:
    first = shipper(log, natsd).start()
    decide(service, log, 20)
    assert first.flush(30)
    first.close()
    decide(service, log, 20)
    log.close()
    second = shipper(log, natsd).start()  # a new process: it knows only the stream
    assert second.flush(30)
    second.close()
    assert second.entries > 0 and first.entries + second.entries == sum(
        entries_at(p, 0, 1 << 30)[1] for p in segments(log.directory))
    assert asyncio.run(stream_messages(natsd.url)) == first.messages + second.messages
    report = pull(natsd.url, "toy", tmp_path / "copy")
    assert report.duplicates == 0 and same_files(log.directory, tmp_path / "copy" / "w1")


def test_a_second_pull_into_the_same_directory_adds_only_what_is_new(
        service: Service, log: AuditLog, natsd: NatsServer, tmp_path: Path) -> None:
    s = shipper(log, natsd).start()
    decide(service, log, 20)
    assert s.flush(30)
    pull(natsd.url, "toy", tmp_path / "copy", worker="w1")
    decide(service, log, 20)
    log.close()
    assert s.flush(30)
    s.close()
    again = pull(natsd.url, "toy", tmp_path / "copy", worker="w1")
    assert again.duplicates > 0 and same_files(log.directory, tmp_path / "copy")


def test_another_log_under_the_same_subject_is_refused(
        service: Service, log: AuditLog, natsd: NatsServer, tmp_path: Path) -> None:
    decide(service, log, 10)
    log.close()
    assert asyncio.run(shipper(log, natsd).run(follow=False)) is None
    other = tmp_path / "other" / "w1"
    other.mkdir(parents=True)
    (other / segments(log.directory)[0].name).write_bytes(b"\0\0\0\1x" + bytes(16))
    with pytest.raises(OffboxError, match="holds a different log") as err:
        asyncio.run(AuditShipper(other, natsd.url, service="toy").run(follow=False))
    assert err.value.code == "audit_offbox"


def test_a_gap_in_the_stream_fails_the_pull(
        service: Service, log: AuditLog, natsd: NatsServer, tmp_path: Path) -> None:
    decide(service, log, 20)
    log.close()
    asyncio.run(shipper(log, natsd).run(follow=False))

    async def delete_second() -> None:
        nc = await nats.connect(natsd.url)
        await nc.jetstream().delete_msg(DEFAULT_STREAM, 2)
        await nc.close()

    asyncio.run(delete_second())
    with pytest.raises(OffboxError, match="gap"):
        pull(natsd.url, "toy", tmp_path / "copy")


def test_the_stream_is_created_with_file_storage_and_declared_limits(
        service: Service, log: AuditLog, natsd: NatsServer) -> None:
    decide(service, log, 2)
    asyncio.run(shipper(log, natsd).run(follow=False))

    async def config() -> Any:
        nc = await nats.connect(natsd.url)
        try:
            return (await nc.jetstream().stream_info(DEFAULT_STREAM)).config
        finally:
            await nc.close()

    cfg = asyncio.run(config())
    assert cfg.storage == StorageType.FILE and cfg.discard == DiscardPolicy.NEW
    assert cfg.max_bytes == 1 << 30 and cfg.max_msg_size == 1 << 20 and cfg.subjects == ["tailguard.audit.>"]


def test_a_partly_written_entry_is_not_shipped(tmp_path: Path) -> None:
    seg = tmp_path / "segment-00000000.tgaudit"
    whole = b"\0\0\0\3abc" + bytes(16)
    seg.write_bytes(whole + b"\0\0\0\5ab")
    assert entries_at(seg, 0, 1 << 20) == (whole, 1)
    assert entries_at(seg, len(whole), 1 << 20) == (b"", 0)
    assert entries_at(seg, 0, 4) == (whole, 1)  # one entry larger than the limit goes alone


def test_subject_tokens_are_checked() -> None:
    assert subject_for("toy", "123") == "tailguard.audit.toy.123"
    with pytest.raises(OffboxError) as err:
        subject_for("to.y", "1")
    assert err.value.code == "audit_offbox"


def tailguard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tailguard", *args], capture_output=True, text=True)


def test_a_served_log_is_copied_off_box_and_the_copy_verifies(
        toy_dir: Path, natsd: NatsServer, tmp_path: Path) -> None:
    key, audit = tmp_path / "key", tmp_path / "audit"
    assert tailguard("audit", "keygen", str(key)).returncode == 0
    with ServerProcess.start(toy_dir, "--tcp", "127.0.0.1:0", "--audit-dir", str(audit),
                             "--audit-key-file", str(key), "--audit-nats", natsd.url) as proc:
        assert proc.tcp is not None
        with Client(proc.tcp, timeout_s=10) as c:
            for i in range(30):
                c.predict(f"k{i % 5}", CTX, budget_us=1_000_000)
        proc.terminate()
        assert proc.wait(30) == 0
    (worker_dir,) = list(audit.iterdir())
    p = tailguard("audit", "pull", str(tmp_path / "copy"), "--nats", natsd.url, "--service", "toy", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["workers"][worker_dir.name]["entries"] >= 32  # header, 30, checkpoint
    copy = tmp_path / "copy" / worker_dir.name
    v = tailguard("audit", "verify", str(copy), "--key-file", str(key), "--json")
    assert v.returncode == 0 and json.loads(v.stdout)["warnings"] == []
    assert same_files(worker_dir, copy)


def test_the_ship_command_catches_up_and_says_so(
        service: Service, log: AuditLog, natsd: NatsServer, tmp_path: Path) -> None:
    decide(service, log, 10)
    log.close()
    r = tailguard("audit", "ship", str(log.directory), "--nats", natsd.url, "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["ok"] and out["entries"] > 10
    assert out["subject"] == "tailguard.audit.toy.w1"
    again = json.loads(tailguard("audit", "ship", str(log.directory), "--nats", natsd.url, "--json").stdout)
    assert again["ok"] and again["messages"] == 0  # resumed at the end: nothing sent twice
