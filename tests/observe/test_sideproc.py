"""The side process: the audit log and the drift monitor in a child process.

Real child processes (``python -m tailguard.observe.sidechild``), with both transports —
``ring`` (decisions in a shared-memory ``DecisionRing`` written by the compiled hook) and
``pipe`` (the tap's entries in msgpack frames): every decision reaches the log bit for bit, a
child killed with SIGKILL is restarted and the log holds every decision exactly once, drift
scores and labels cross both ways, a child that cannot start says why with its code, and the
wire keeps frames whole across partial reads and full pipes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from test_drift_service import DRIFT as DRIFT_SECTION
from toyservice import CTX, PRIMARY_INPUTS, training_matrix

from tailguard import Service
from tailguard.audit.format import DecisionRecord, segment_name
from tailguard.audit.log import new_key
from tailguard.audit.verify import read_entries, verify
from tailguard.cli import main
from tailguard.decision import BatchDecision, Decision
from tailguard.observe.latency import LatencyRecorder
from tailguard.observe.sidechild import Priority
from tailguard.observe.sideproc import AuditConfig, RemoteDrift, SideProcess, SideProcessError
from tailguard.observe.sidewire import (
    DECISIONS,
    Inbox,
    Outbox,
    decode_decision,
    decoder,
    encoder,
    frame,
    singles_entries,
    singles_frame,
)
from tailguard.observe.tap import DecisionTap
from tailguard.service import load_service


def records(directory: Path) -> list[DecisionRecord]:
    dec = msgspec.msgpack.Decoder(DecisionRecord)
    out = []
    for seg in sorted(directory.glob("segment-*")):
        for _, _, payload, _ in read_entries(seg):
            try:
                out.append(dec.decode(payload))
            except msgspec.ValidationError:
                continue  # header, checkpoint, gap
    return out


def until(cond: Callable[[], bool], step: Callable[[], Any], timeout_s: float = 30.0) -> None:
    """Run ``step`` until ``cond`` holds (a deadline, not a sleep that makes a race pass)."""
    end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < end, "timed out"
        step()
        time.sleep(0.005)


@pytest.fixture
def audit_cfg(tmp_path: Path) -> AuditConfig:
    key = tmp_path / "audit.key"
    new_key(key)
    return AuditConfig(str(tmp_path / "audit"), str(key), options={"fsync_interval_s": 0.01})


def _compiles() -> bool:
    from tailguard.observe.ring import compile_writer

    return compile_writer()[0] is not None


TRANSPORTS = [pytest.param("ring", marks=pytest.mark.skipif(not _compiles(), reason="no C compiler")),
              "pipe"]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def side(service: Service, audit_cfg: AuditConfig, transport: str) -> Iterator[SideProcess]:
    sp = SideProcess.attach(service, audit=audit_cfg, status_interval_s=0.01, transport=transport)
    assert sp.transport == transport
    yield sp
    service.close()


def test_every_decision_reaches_the_log_bit_for_bit(service: Service, side: SideProcess,
                                                    audit_cfg: AuditConfig) -> None:
    made: list[tuple[Any, bytes, bytes]] = []
    for i in range(300):
        d = service.engine.predict(f"k{i % 7}", {**CTX, "price": 100.0 + i})
        made.append((d.key, d.outputs.tobytes(), service.engine.last_features(1).tobytes()))
        if i % 50 == 0:
            service.run_side_path(0.0001)
    b = service.engine.predict_batch(["a", "b", "c"], CTX)
    batch_feats = service.engine.last_features(3).tobytes()
    service.close()
    assert side.closed and side.statistics()["unacknowledged"] == 0
    key = Path(audit_cfg.key_file).read_bytes()
    report = verify(audit_cfg.directory, key, service.spec.name)
    assert report.ok, report.problem
    recs = records(Path(audit_cfg.directory))
    assert len(recs) == 301
    for (k, out, feats), r in zip(made, recs, strict=False):
        assert (r.keys, r.outputs, r.features) == (k, out, feats)
    last = recs[-1]
    assert last.keys == ["a", "b", "c"] and last.outputs == b.outputs.tobytes()
    assert last.features == batch_feats
    assert last.model_hash and recs[0].model_hash == service.engine.rungs[0].model.manifest.content_hash


def test_a_killed_side_process_is_restarted_and_every_decision_is_logged_once(
        service: Service, side: SideProcess, audit_cfg: AuditConfig) -> None:
    keys = [f"k{i}" for i in range(400)]
    for k in keys[:200]:
        service.engine.predict(k, CTX)
    side.drain()
    until(lambda: side.statistics()["unacknowledged"] == 0 and side.latest.get("received") == 200, side.drain)
    for k in keys[200:300]:  # sent, perhaps written, surely not acknowledged when it dies
        service.engine.predict(k, CTX)
    side.drain()
    pid = side.statistics()["pid"]
    os.kill(pid, signal.SIGKILL)
    for k in keys[300:]:
        service.engine.predict(k, CTX)
    until(lambda: side.restarts == 1 and side.ready, side.drain)
    assert side.statistics()["pid"] != pid
    service.close()
    key = Path(audit_cfg.key_file).read_bytes()
    report = verify(audit_cfg.directory, key, service.spec.name)
    assert report.ok, report.problem
    assert [r.keys for r in records(Path(audit_cfg.directory))] == keys  # none lost, none twice
    assert report.segments >= 2  # the restarted log closed the torn segment and went on
    lat = service.latency
    assert lat is not None  # every decision's timings folded once, or counted as lost with the child
    assert lat.snapshot()["predict"]["total"]["count"] + lat.dropped == len(keys)


def test_decisions_wait_in_the_tap_while_no_child_runs(service: Service, side: SideProcess,
                                                       audit_cfg: AuditConfig) -> None:
    side.max_backoff_s = side.backoff_s = 3600.0  # no restart until close
    os.kill(side.statistics()["pid"], signal.SIGKILL)
    until(lambda: side.restarts == 1, side.drain)
    for i in range(50):
        service.engine.predict(f"w{i}", CTX)
    assert side.drain() == 0 and side.statistics()["queued"] == 50
    service.close()  # restarts the child to hand everything over
    assert [r.keys for r in records(Path(audit_cfg.directory))] == [f"w{i}" for i in range(50)]


def test_a_child_that_cannot_start_says_why(service: Service, audit_cfg: AuditConfig, transport: str) -> None:
    d = Path(audit_cfg.directory)
    d.mkdir()
    (d / segment_name(0)).write_bytes(b"not an audit segment")
    with pytest.raises(SideProcessError) as e:
        SideProcess(service, audit=audit_cfg, transport=transport).start()
    assert e.value.code.startswith("audit") and "failed to start" in str(e.value)
    for i in range(5):
        service.engine.predict(f"k{i}", CTX)
    lat = service.latency
    assert lat is not None
    if transport == "pipe":
        tap = service.tap
        assert tap is not None
        assert tap.backlog(ignore=lat.reader) == 0  # the failed export holds nothing back
    else:  # the ring left the engine (nothing would read it); the latency recorder is a hook again
        assert service.ring is None and lat in service.engine.hooks
        assert lat.snapshot()["predict"]["total"]["count"] == 5


DRIFT = DRIFT_SECTION + "labels = true\n"


def test_drift_scores_and_labels_cross_the_pipe(toy_copy: Path, tmp_path: Path, transport: str) -> None:
    pytest.importorskip("river")
    x, _ = training_matrix(2000, seed=4)
    data = tmp_path / "train.npz"
    np.savez(data, features=x, columns=np.array([*PRIMARY_INPUTS]))
    assert main(["drift", "reference", str(toy_copy), "--data", str(data)]) == 0
    (toy_copy / "service.toml").write_text((toy_copy / "service.toml").read_text() + DRIFT)
    svc = load_service(toy_copy)
    try:
        sp = SideProcess.attach(svc, drift=True, status_interval_s=0.01, transport=transport)
        remote = next(t for t in svc.side_tasks if isinstance(t, RemoteDrift))
        for i in range(60):
            svc.engine.predict(f"k{i}", CTX)
        for i in range(20):
            remote.observe_label(f"k{i}", 1.0)
        until(lambda: remote.statistics().get("windows") == 1 and "labels" in remote.statistics()
              and remote.statistics()["labels"]["matched"] == 20, svc.run_side_path)
        scores = remote.drift_scores()
        assert {f"psi:{c}" for c in PRIMARY_INPUTS} <= set(scores) and "ks:prediction.p" in scores
        assert remote.statistics()["recorded_rows"] == 60 and sp.statistics()["running"]
    finally:
        svc.close()


# -- the ring transport -----------------------------------------------------------------------------
ring_only = pytest.mark.skipif(not _compiles(), reason="no C compiler")


@ring_only
def test_the_ring_is_the_only_reply_path_hook_and_feeds_the_latency_recorder(
        toy_dir: Path, audit_cfg: AuditConfig) -> None:
    service = load_service(toy_dir, freeze_gc=False)  # the real clock: timings worth comparing
    sp = SideProcess.attach(service, audit=audit_cfg, status_interval_s=0.01)
    try:
        assert sp.transport == "ring" and sp.statistics()["compiled"]
        ring = service.ring
        assert ring is not None and service.tap is None and service.engine.hooks == (ring,)
        ref = LatencyRecorder()  # the same decisions folded in process, as a hook: the reference
        service.engine.set_hooks([ring, ref])
        for i in range(70):
            service.engine.predict(f"k{i % 5}", CTX)
        lat = service.latency
        assert lat is not None and lat.reads_ring
        assert lat.pending() == 0 and service.side_backlog() == 0  # nothing to fold on this core
        # the child folds the timings and sends the histograms back with its status
        until(lambda: lat.snapshot()["predict"]["total"]["count"] == 70, service.run_side_path)
        ref.drain()
        assert ref.one.count(4) == 70 and ref.one.max_ns[4] > 1_000  # real timings, µs apart
        assert np.array_equal(lat.one.counts, ref.one.counts) and lat.one.max_ns == ref.one.max_ns
        assert lat.one.sum_ns == ref.one.sum_ns and lat.snapshot() == ref.snapshot()
        until(lambda: sp.statistics()["unacknowledged"] == 0
              and sp.latest.get("audit", {}).get("written") == 70, service.run_side_path)
    finally:
        service.close()
    assert service.ring is None and service.latency in service.engine.hooks


@ring_only
def test_long_keys_new_labels_and_gaps_reach_the_log_through_the_ring(
        service: Service, audit_cfg: AuditConfig) -> None:
    sp = SideProcess.attach(service, audit=audit_cfg, status_interval_s=0.01, ring_capacity=64)
    long_key = "x" * 300  # longer than a record's key field: sent apart (TABLES), by position
    service.engine.predict(long_key, CTX)
    service.engine.predict("short", CTX, priority=service.spec.priorities[-1].name)
    sp.max_backoff_s = sp.backoff_s = 3600.0  # no restart: the ring fills up
    os.kill(sp.statistics()["pid"], signal.SIGKILL)
    until(lambda: sp.restarts == 1, sp.drain)
    for i in range(100):  # 64 fit (less what the dead child left unacknowledged), the rest dropped
        service.engine.predict(f"d{i}", CTX)
    dropped = sp.statistics()["ring_dropped"]
    assert dropped > 0
    service.close()  # restarts the child: it reads the ring from ``consumed`` and closes the log
    key = Path(audit_cfg.key_file).read_bytes()
    report = verify(audit_cfg.directory, key, service.spec.name)
    assert report.ok, report.problem
    recs = records(Path(audit_cfg.directory))
    assert recs[0].keys == long_key and recs[1].keys == "short"
    assert recs[1].priority == service.spec.priorities[-1].name
    assert len(recs) == 2 + 100 - dropped
    assert report.dropped == dropped  # the gap is in the chain


@ring_only
def test_the_child_takes_the_ring_in_batches_and_sooner_when_it_fills(
        service: Service, audit_cfg: AuditConfig) -> None:
    sp = SideProcess.attach(service, audit=audit_cfg, status_interval_s=0.01, ring_capacity=64,
                            batch_interval_s=3600.0)  # never by time: only at a quarter full (16)
    try:
        for i in range(10):
            service.engine.predict(f"b{i}", CTX)
        seen = sp.statuses
        until(lambda: sp.statuses >= seen + 5, service.run_side_path)  # five reports later...
        assert sp.latest["received"] == 0 and sp.statistics()["queued"] == 10  # ...still waiting
        for i in range(10, 20):
            service.engine.predict(f"b{i}", CTX)
        until(lambda: sp.latest.get("audit", {}).get("written") == 20, service.run_side_path)
    finally:
        service.close()
    assert [r.keys for r in records(Path(audit_cfg.directory))] == [f"b{i}" for i in range(20)]


@ring_only
def test_batch_records_sets_how_many_records_make_a_batch(service: Service, audit_cfg: AuditConfig) -> None:
    with pytest.raises(ValueError, match="batch_records"):
        SideProcess(service, audit=audit_cfg, ring_capacity=64, batch_records=65)
    sp = SideProcess.attach(service, audit=audit_cfg, status_interval_s=0.01, ring_capacity=64,
                            batch_interval_s=3600.0, batch_records=5)
    try:
        for i in range(4):
            service.engine.predict(f"c{i}", CTX)
        seen = sp.statuses
        until(lambda: sp.statuses >= seen + 5, service.run_side_path)
        assert sp.latest["received"] == 0  # four wait for the fifth
        service.engine.predict("c4", CTX)
        until(lambda: sp.latest.get("audit", {}).get("written") == 5, service.run_side_path)
    finally:
        service.close()


def test_statuses_are_read_on_the_injected_clock(service: Service, audit_cfg: AuditConfig,
                                                 transport: str) -> None:
    import select

    now = [10**9]
    sp = SideProcess.attach(service, audit=audit_cfg, status_interval_s=0.01, transport=transport,
                            clock=lambda: now[0])
    try:
        sp.drain()  # due: reads what came
        seen = sp.statuses
        assert sp._in is not None
        assert select.select([sp._in.fd], [], [], 30.0)[0]  # the child has reported again...
        sp.drain()
        assert sp.statuses == seen  # ...but the clock stood still: not read
        now[0] += 10_000_000
        sp.drain()
        assert sp.statuses > seen
    finally:
        service.close()


@ring_only
def test_an_fsync_per_record_takes_every_record_at_once(service: Service, tmp_path: Path) -> None:
    key = tmp_path / "k"
    new_key(key)
    cfg = AuditConfig(str(tmp_path / "audit"), str(key), options={"fsync_interval_s": 0.0})
    sp = SideProcess.attach(service, audit=cfg, status_interval_s=0.01, batch_interval_s=3600.0)
    try:
        service.engine.predict("one", CTX)
        until(lambda: sp.latest.get("audit", {}).get("written") == 1, service.run_side_path)
    finally:
        service.close()


def test_priority_is_idle_escalates_past_half_a_ring_and_returns_when_caught_up() -> None:
    calls: list[bool] = []

    def setter(idle: bool) -> str | None:
        calls.append(idle)
        return None

    p = Priority(True, 64, setter)
    assert p.idle and calls == [True]
    p.update(31)  # under half a ring: stays idle
    assert p.idle and calls == [True]
    p.update(32)
    assert not p.idle and calls == [True, False] and p.escalations == 1
    p.update(9)  # still more than an eighth waiting: stays escalated
    assert not p.idle and len(calls) == 2
    p.update(8)
    assert p.idle and calls == [True, False, True]


def test_priority_stays_put_when_the_system_refuses_or_it_is_not_wanted() -> None:
    answers = iter([None, "PermissionError: not allowed"])
    calls: list[bool] = []

    def setter(idle: bool) -> str | None:
        calls.append(idle)
        return next(answers)

    p = Priority(True, 64, setter)
    p.update(64)  # escalation refused: stays idle, stops asking, says why
    assert p.idle and p.escalations == 0 and p.error == "PermissionError: not allowed"
    p.update(64)
    assert calls == [True, False]
    off = Priority(False, 64, setter)
    off.update(64)
    assert not off.idle and calls == [True, False]


def _policy(pid: int) -> int:
    return os.sched_getscheduler(pid)


@ring_only
@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="no SCHED_IDLE here")
def test_the_ring_child_runs_idle_and_escalates_while_half_the_ring_waits(
        service: Service, audit_cfg: AuditConfig) -> None:
    sp = SideProcess.attach(service, audit=audit_cfg, status_interval_s=0.01, ring_capacity=64,
                            batch_interval_s=3600.0, batch_records=64)  # taken only when full
    try:
        assert sp.pid is not None and _policy(sp.pid) == os.SCHED_IDLE
        for i in range(40):  # over half the ring waits: normal policy until it is taken
            service.engine.predict(f"e{i}", CTX)
        until(lambda: sp.statistics()["escalations"] == 1, service.run_side_path)
        assert _policy(sp.pid) == os.SCHED_OTHER and sp.statistics()["idle"] is False
        for i in range(40, 64):  # a full ring: taken, then idle again
            service.engine.predict(f"e{i}", CTX)
        until(lambda: sp.latest.get("audit", {}).get("written") == 64 and sp.statistics()["idle"],
              service.run_side_path)
        assert _policy(sp.pid) == os.SCHED_IDLE and sp.statistics()["escalations"] == 1
    finally:
        service.close()


@ring_only
def test_a_ring_child_without_idle_priority_runs_under_the_normal_policy(
        service: Service, audit_cfg: AuditConfig) -> None:
    sp = SideProcess.attach(service, audit=audit_cfg, status_interval_s=0.01, idle=False)
    try:
        assert sp.pid is not None and _policy(sp.pid) == os.SCHED_OTHER
        until(lambda: "idle" in sp.latest, service.run_side_path)
        assert sp.statistics()["idle"] is False and os.getpriority(os.PRIO_PROCESS, sp.pid) >= 5
    finally:
        service.close()


# -- the wire -------------------------------------------------------------------------------------
def test_single_decisions_travel_as_columns_bit_for_bit(service: Service) -> None:
    tap = DecisionTap(service.engine, 64)
    service.engine.set_hooks([tap])
    r = tap.reader()
    for i in range(5):
        service.engine.predict(f"k{i}", {**CTX, "price": 99.5 + i})
    run = r.run(64)
    msg = decoder().decode(encoder().encode(singles_frame(0, 0, None, run)))
    back = list(singles_entries(msg, tap.width, tap.n_views))
    for (d, *rest), (e, *erest) in zip(run, back, strict=True):
        assert rest == erest
        assert isinstance(e, Decision) and e.outputs.tobytes() == d.outputs.tobytes()
        assert (e.key, e.model_version, e.rung, e.rung_index, e.flags, e.priority, e.timings_ns,
                e.output_names) == (d.key, d.model_version, d.rung, d.rung_index, d.flags, d.priority,
                                    d.timings_ns, d.output_names)


def test_batch_decisions_travel_as_maps_with_their_arrays(service: Service) -> None:
    b = service.engine.predict_batch(["a", "b"], CTX)
    entry = (b, b"f", b"w", 1, 2, 3, 2)
    msg = decoder().decode(encoder().encode([DECISIONS, 0, 0, None, [entry]]))
    e = decode_decision(msg[4][0][0])
    assert isinstance(e, BatchDecision) and e.keys == ["a", "b"]
    assert e.outputs.dtype == b.outputs.dtype and e.outputs.tobytes() == b.outputs.tobytes()
    assert np.array_equal(e.rungs, b.rungs) and np.array_equal(e.flags, b.flags)
    assert e.rung_names == b.rung_names


def test_frames_stay_whole_across_partial_reads_and_a_full_pipe() -> None:
    r, w = os.pipe()
    out, inbox = Outbox(w), Inbox(r)
    payloads = [os.urandom(n) for n in (10, 70_000, 3, 200_000, 0)]
    for p in payloads:
        out.put(frame(p))
    assert len(out) > 0  # a 64 KiB pipe cannot take 270 KB: the rest waits, nothing blocks
    got: list[bytes] = []
    while len(got) < len(payloads):
        inbox.read(4096)  # small reads split frames anywhere
        got += [bytes(f) for f in inbox.frames()]
        out.flush()
    assert got == payloads
    os.close(w)
    inbox.read()
    assert inbox.eof
    os.close(r)


# -- tailguard serve --side-process ----------------------------------------------------------------
def test_a_served_app_logs_through_its_side_process(toy_copy: Path, tmp_path: Path) -> None:
    import json as _json

    from inthread import InThreadServer

    from tailguard.serve.app import ServeConfig

    key = tmp_path / "audit.key"
    new_key(key)
    server = InThreadServer(toy_copy, ServeConfig(side_process=True, audit_dir=str(tmp_path / "audit"),
                                                  audit_key_file=str(key), dashboard_interval_s=0))
    keys = [f"s{i}" for i in range(40)]
    try:
        app = server.app
        assert app.side_process is not None and app.audit is None and app.side_process.ready
        assert app.side_process.idle  # ServeConfig.side_idle's default
        for k in keys:
            conn = server.client()
            body = {"inputs": [{"name": "item", "shape": [1], "datatype": "BYTES", "data": [k]},
                               {"name": "price", "shape": [1], "datatype": "FP64", "data": [101.0]},
                               {"name": "size", "shape": [1], "datatype": "FP64", "data": [2.0]}]}
            conn.request("POST", "/v2/models/toy/infer", _json.dumps(body).encode())
            r = conn.getresponse()
            assert r.status == 200, r.read()
            r.read()
            conn.close()
    finally:
        server.close()  # closes the side process: everything written, closing checkpoint
    logs = [p for p in (tmp_path / "audit").iterdir() if p.is_dir()]
    assert len(logs) == 1  # one log per worker pid, as in process
    assert verify(logs[0], key.read_bytes(), "toy").ok
    assert [r.keys for r in records(logs[0])] == keys
