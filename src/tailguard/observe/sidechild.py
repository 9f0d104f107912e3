"""The side process itself: the audit log and the drift monitor of a service, on another core.

Started by ``tailguard.observe.sideproc.SideProcess`` as ``python -m
tailguard.observe.sidechild CONFIG`` (a JSON object) with two inherited pipe ends: ``data_fd``
(frames of decisions and labels from the serving process, ``tailguard.observe.sidewire``) and
``status_fd`` (status back).  It loads the same service directory ``offline`` (features in
memory, no Redis: the engine never decides here, it only gives the layout, the PII marks and
the drift reference their context), makes the service's ``DecisionTap`` and attaches the
audit log (and its NATS shipper) and the drift monitor to it, exactly as ``tailguard serve``
attaches them in process.  Then, until the data pipe closes:

1. sleep ``POLL_S`` (a timed nap rather than a wait on the pipe: see ``run``), then read
   whatever the data pipe holds — time-driven work (fsync, checkpoints, drift windows closed
   by time) runs whether or not decisions came;
2. rebuild each received entry as the tap tuple it was in the serving process
   (``DecisionTap.put``; a gap the serving tap could not keep is added to ``dropped``, so the
   audit chain records it) and hand labels to the drift monitor.  With the ring transport
   (``ring_fd`` in the config) the entries come from the shared-memory ``DecisionRing``
   instead (``RingSource``: from the ring's ``consumed`` on, once the labels they name have
   come in ``TABLES`` frames), and their timings are folded into latency histograms;
3. run the whole side path (no budget: this process has nothing else to do), then, with the
   ring, move its ``consumed`` past what the audit log has handed to the OS;
4. report, every ``status_interval_s``: ``ack`` (the serving position below which every
   record is in the OS — what survives a kill -9 of this process — or, without an audit log,
   every entry consumed), the drift scores and statistics, the audit counters and, with the
   ring, the latency histograms' growth.

When the data pipe closes (the serving process closes the side process, or died) it closes
the side tasks (the audit log writes everything and its closing checkpoint), reports once
more and exits 0.  A start that fails (a log that does not verify, a missing drift reference)
reports ``{"error": [code, message]}`` and exits 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
import numpy as np

from tailguard.audit.pii import plain
from tailguard.errors import TailguardError
from tailguard.observe.sidewire import (
    DECISIONS,
    LABELS,
    SINGLES,
    TABLES,
    Inbox,
    Outbox,
    decode_decision,
    decoder,
    encoder,
    frame,
    singles_entries,
)
from tailguard.observe.tap import DECISION, ROWS, decided_ns

__all__ = ["BATCH_S", "POLL_S", "Priority", "main"]

#: Between two reads of the pipe and the ring.  Not 2 ms: the child's work runs on the other
#: core, and on a 2-vCPU VM whose vCPUs share a physical core, every wake-up there slows the
#: serving core (measured: a busy Python loop on the other vCPU made a decision 21 % slower; the
#: child's own activity cost the trading example's decision +1.3 µs at p50, stopped 0.3).  Fewer,
#: larger batches cost less per decision.  Records wait in the ring meanwhile: a kill of either
#: process loses none; a crash of both loses at most this plus the fsync interval.
POLL_S = 0.02
#: With the ring transport, how often the records are taken and the side path run (the pipe and
#: the ring's fill are still looked at every ``POLL_S``).  Every batch of work on the other
#: vCPU evicts what the serving core's next decisions need: measured on the trading example,
#: p50 on/off 1.167 polling every 2 ms, 1.141 every 20, 1.118 every 50, 1.073 every 200 ms
#: (1.066 with the child stopped).  Decisions wait in shared memory meanwhile (safe from a
#: crash of either process); ``SideProcess(batch_interval_s=...)`` sets it, 0 with an fsync
#: per record.
BATCH_S = 0.2
FULL_STATUS_NS = 1_000_000_000  # drift scores and statistics go back at most once a second


def set_idle_policy(idle: bool) -> str | None:
    """This process under ``SCHED_IDLE`` (``idle``) or back under the normal policy at its
    nice value; the error if the system refused (or has no such policies), else None."""
    try:
        policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except (AttributeError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


class Priority:
    """The child's claim on the CPUs, with the ring transport.  ``SCHED_IDLE`` (Linux) while it
    keeps up: it runs only on a CPU nothing else wants, and a serving process woken by a
    request takes that CPU back at once, where a niced normal task may keep it to the end of
    its scheduler slice (through the server on the 2-vCPU VM, on/off p99 4.47 niced against
    0.68-2.35 idle over nine runs: docs/benchmarks.md).  Once ``high`` records wait (half the
    ring) it goes back to the normal policy at its nice value, so a machine busy with other
    work cannot starve the audit log into drops, and to idle again when no more than ``low``
    wait.  ``setter`` is
    ``set_idle_policy`` (injected by tests)."""

    def __init__(self, wanted: bool, capacity: int,
                 setter: Callable[[bool], str | None] = set_idle_policy) -> None:
        self.setter = setter
        self.high, self.low = max(1, capacity // 2), capacity // 8
        self.escalations = 0
        self.error: str | None = None
        self.wanted = wanted
        self.idle = wanted and self._set(True)

    def _set(self, idle: bool) -> bool:
        self.error = self.setter(idle)
        if self.error is not None:
            self.wanted = False  # refused (no SCHED_IDLE, or not allowed back): stay as we are
        return self.error is None

    def update(self, backlog: int) -> None:
        """Follow the ring's ``backlog`` (records waiting): escalate or go back to idle."""
        if not self.wanted:
            return
        if self.idle and backlog >= self.high:
            if self._set(False):
                self.idle = False
                self.escalations += 1
        elif not self.idle and backlog <= self.low and self._set(True):
            self.idle = True


class _Child:
    def __init__(self, config: dict[str, Any]) -> None:
        import tailguard

        self.out = Outbox(config["status_fd"])
        self.enc = encoder()
        svc = tailguard.load_service(config["service_dir"], record_latency=False, freeze_gc=False,
                                     offline=True)
        self.svc = svc
        self.tap = svc.decision_tap()
        self.ring: RingSource | None = None
        if config.get("ring_fd") is not None:  # decisions in shared memory: read from ``consumed``
            self.ring = RingSource(config["ring_fd"], svc.engine, config.get("latency_from"))
            self.offset = 0  # (unused: the ring maps positions itself)
        else:
            self.offset = config["start"] - self.tap.head  # serving tap position = local + offset
        self.audit: Any = None
        self.drift: Any = None
        a = config.get("audit")
        if a:
            from tailguard.audit.admin import open_log

            self.audit = open_log(svc, a["directory"], a["key_file"],
                                  signing_key_file=a.get("signing_key_file"),
                                  subject_keys_dir=a.get("subject_keys_dir"), keep_days=a.get("keep_days"),
                                  keep_segments=a.get("keep_segments"), **a.get("options", {}))
            if a.get("nats"):
                from tailguard.audit.offbox import AuditShipper

                shipper = AuditShipper(self.audit.directory, a["nats"], service=svc.spec.name,
                                       stream=a.get("nats_stream") or "TAILGUARD_AUDIT")
                svc.attach(shipper.start())  # closed after the log: its closing checkpoint is shipped
            svc.attach(self.audit)
        if config.get("drift"):
            from tailguard.observe.drift import DriftMonitor

            self.drift = DriftMonitor.from_spec(svc)
            svc.attach(self.drift)
        self.interval_ns = round(config.get("status_interval_s", 0.05) * 1e9)
        batch = config.get("batch_interval_s", BATCH_S)
        if self.audit is not None and self.audit.fsync_interval_ns == 0:
            batch = 0.0  # an fsync per record was asked for: every record as soon as it is seen
        self.batch_ns = round(batch * 1e9)
        self.batch_records = config.get("batch_records") or (
            self.ring.reader.capacity // 4 if self.ring is not None else 0)
        # Idle priority needs the ring: its backlog says when to escalate (through the pipe the
        # serving tap holds the backlog, unseen here).
        self.priority = Priority(bool(config.get("idle")) and self.ring is not None,
                                 self.ring.reader.capacity if self.ring is not None else 0)
        self.received = self.duplicates = 0
        # After a restart the serving process sends again everything not acknowledged; what the
        # dead child had already handed to the OS is in the log: skip it (same decision time on
        # the engine clock and the same keys as recorded).
        self._written: set[tuple[int, bytes]] | None = None
        self._keys = msgspec.msgpack.Encoder(enc_hook=plain)
        if config.get("resend") and self.audit is not None:
            self._written = _last_stamps(self.audit)

    def send(self, msg: dict[str, Any]) -> None:
        self.out.put(frame(self.enc.encode(msg)))

    def status(self, *, full: bool = True) -> dict[str, Any]:
        """The counters and ``ack``; with ``full``, the drift scores and statistics too (the
        serving side decodes what it is sent: the large part goes once a second)."""
        msg: dict[str, Any] = {"received": self.received, "duplicates": self.duplicates,
                               "idle": self.priority.idle, "escalations": self.priority.escalations}
        if self.priority.error is not None:
            msg["priority_error"] = self.priority.error
        if self.ring is not None:
            msg["ack"] = self.ring.reader.consumed()
            lat = self.ring.latency_report()
            if lat is not None:
                msg["latency"] = lat
        if self.audit is not None:
            a = self.audit
            if self.ring is None:
                msg["ack"] = a.handed_over + self.offset
            msg["audit"] = {"written": a.written, "dropped": a.dropped, "checkpoints": a.checkpoints,
                            "pending": a.pending}
        elif self.ring is None:
            msg["ack"] = self.tap.head + self.offset
        if self.drift is not None and full:
            msg["drift_scores"] = self.drift.drift_scores()
            msg["drift"] = self.drift.statistics()
        return msg

    def _identity(self, e: tuple[Any, ...]) -> tuple[int, bytes]:
        """An entry's decision time and keys as its record holds them (``_last_stamps``)."""
        d = e[DECISION]
        keys = d.keys if e[ROWS] else d.key
        if isinstance(keys, np.ndarray):
            keys = keys.tolist()
        pii = self.audit.pii
        return decided_ns(e), self._keys.encode(keys if pii is None else pii.apply(keys))

    def apply(self, msg: list[Any]) -> None:
        kind = msg[0]
        if kind in (SINGLES, DECISIONS):
            first, dropped, hashes = msg[1:4]
            tap = self.tap
            if hashes and self.audit is not None:
                self.audit.learn_hashes(hashes)
            if first != tap.head + self.offset:  # never expected: the serving side resends from ack
                raise ValueError(f"side-process stream out of order: {first} after {tap.head + self.offset}")
            tap.dropped += dropped  # not kept there: no position either, so ``offset`` holds
            if kind == SINGLES:
                entries: Iterable[tuple[Any, ...]] = singles_entries(msg, tap.width, tap.n_views)
            else:
                entries = ((decode_decision(e[0]), *e[1:]) for e in msg[4])
            for e in entries:
                if not self.put(e):
                    self.offset += 1  # the serving tap's position, with no local entry
        elif kind == TABLES and self.ring is not None:
            hashes = self.ring.learn(msg)
            if hashes and self.audit is not None:
                self.audit.learn_hashes(hashes)
        elif kind == LABELS and self.drift is not None:
            for key, label, decided_ns, prediction in msg[1]:
                k = tuple(key) if isinstance(key, list) else key
                self.drift.observe_label(k, label, decided_ns=decided_ns, prediction=prediction)

    def put(self, e: tuple[Any, ...]) -> bool:
        """Keep one received entry in the local tap (running the side path when it fills up);
        False when it is a duplicate of a record the previous child already wrote (resent
        after a restart: skipped)."""
        written = self._written
        if written is not None:
            if self._identity(e) in written:
                self.duplicates += 1
                return False
            self._written = None  # past the resent prefix
        tap = self.tap
        if tap.backlog() >= tap.capacity // 2:
            self.svc.run_side_path()
        tap.put(e)
        self.received += 1
        return True

    def pull(self, *, final: bool = False) -> None:
        """Take the ring's new records into the local tap (the ring transport)."""
        ring = self.ring
        assert ring is not None
        tap = self.tap
        while True:
            got = ring.take(final=final)
            for gap, e in got:
                tap.dropped += gap  # dropped before this decision: the audit chain records the gap
                ring.mark(tap.head if self.put(e) else None)
            if not got or not final:
                break
        if final:  # no record will come to carry the last drops: the chain records them now
            tap.dropped += ring.reader.pending_drops()

    def settle(self) -> None:
        """Move the ring's ``consumed`` to what this process is done with: with an audit log,
        the records handed to the OS (what survives a kill -9 here), else everything taken."""
        ring = self.ring
        if ring is not None:
            ring.settle(None if self.audit is None else self.audit.handed_over)

    def run(self, data_fd: int) -> None:
        inbox = Inbox(data_fd)
        dec = decoder()
        last = last_full = 0
        clock = time.monotonic_ns
        last_batch = clock()
        while not inbox.eof:
            # A timed nap, not a wait on the pipe: a wait would be woken by every write of the
            # serving process, and the kernel tends to run the woken reader on the writer's
            # core (wake-affine), right where the next decision is about to run.
            time.sleep(POLL_S)
            while True:  # until the pipe is empty (or closed: ``eof``)
                got = inbox.read()
                for f in inbox.frames():
                    self.apply(dec.decode(f))
                if not got:
                    break
            now = clock()
            ring = self.ring
            backlog = 0
            if ring is not None:
                backlog = ring.backlog()
                self.priority.update(backlog)
            # With the ring, the work comes in batches every ``batch_ns`` (sooner when
            # ``batch_records`` wait, or at the end): each batch's work on the other core evicts
            # what the serving core's next decisions need (see ``POLL_S``), so fewer, larger ones.
            if ring is None or inbox.eof or now - last_batch >= self.batch_ns \
                    or backlog >= self.batch_records:
                if ring is not None:
                    self.pull(final=inbox.eof)
                self.svc.run_side_path()
                self.settle()
                last_batch = now
            if now - last >= self.interval_ns:
                self.out.flush()
                if not len(self.out):  # the previous status went out: no pile-up behind a slow reader
                    full = now - last_full >= FULL_STATUS_NS
                    self.send(self.status(full=full))
                    if full:
                        last_full = now
                last = now
        self.svc.close()
        self.settle()
        self.out.put(frame(self.enc.encode({**self.status(), "closed": True})))
        os_blocking_flush(self.out)


class RingSource:
    """The serving process's ``DecisionRing`` as this process reads it: records from the ring's
    ``consumed`` on, decoded into tap entries once the labels they refer to have come
    (``TABLES``), and the map from local tap positions back to ring positions (a batch is one
    entry here and ``n`` records there) for moving ``consumed``."""

    def __init__(self, fd: int, engine: Any, latency_from: int | None = None) -> None:
        from tailguard.observe.latency import StageHistograms
        from tailguard.observe.ring import RingReader

        self.reader = RingReader(fd)
        self.position = self.reader.consumed()
        # The serving process's latency histograms, folded here from ``latency_from`` on (None:
        # it records none) and sent back as deltas with each status.
        self.latency_from = latency_from
        self._hists = (StageHistograms(), StageHistograms())  # single decisions, batches
        self._sent = [(h._flat.copy(), list(h.sum_ns)) for h in self._hists]
        self._folded_to = self.position if latency_from is None else max(latency_from, self.position)
        self._reported_to = -1
        self.output_names, self.rung_names = engine.output_names, engine.rung_names
        self.versions: list[str] = []
        self.priorities: list[str] = []
        self.spilled: dict[int, bytes] = {}
        #: (local tap position after an entry, ring position after it), oldest first.
        self._marks: deque[tuple[int, int]] = deque()
        self._end = self.position  # ring position after the last entry marked
        self._pending_ends: deque[int] = deque()  # ring position after each entry taken, not marked

    def learn(self, msg: list[Any]) -> dict[str, str]:
        """Apply a ``TABLES`` message; returns the new versions' content hashes."""
        _, v_from, versions, hashes, p_from, priorities, spilled = msg
        self.versions[v_from:] = versions
        self.priorities[p_from:] = priorities
        self.spilled.update(spilled)
        return dict(hashes or {})

    def take(self, *, final: bool = False, most: int = 4096) -> list[tuple[int, tuple[Any, ...]]]:
        """``(dropped before it, entry)`` for the next whole decisions, up to ``most`` records:
        stops before a record whose labels or long key have not come yet (unless ``final``:
        the serving process is gone, nothing more will come)."""
        from tailguard.observe.ring import KEY_SPILLED, decode

        rr = self.reader
        head = rr.head()
        pos = self.position
        if head <= pos:
            return []
        recs = rr.read(pos, min(head, pos + most))
        last = recs[-1]
        if last["batch_rows"] and last["batch_row"] != last["batch_rows"] - 1:  # a batch cut by ``most``
            recs = recs[: len(recs) - int(last["batch_row"]) - 1]
        if not final:
            unknown = (recs["version"] >= len(self.versions)) | (recs["priority"] >= len(self.priorities))
            long = recs["key_kind"] == KEY_SPILLED
            if long.any():
                unknown |= long & ~np.isin(recs["position"], np.fromiter(self.spilled, dtype=np.int64))
            if unknown.any():
                k = int(np.argmax(unknown))
                k -= int(recs["batch_row"][k])  # from the start of its batch
                recs = recs[:k]
        if not len(recs):
            return []
        self._fold(recs)
        starts = np.flatnonzero(recs["batch_row"] == 0)
        gaps = recs["dropped_before"][starts].tolist()
        ends = (pos + np.append(starts[1:], len(recs))).tolist()
        entries = decode(recs, self.versions, self.priorities, self.output_names, self.rung_names,
                         self.spilled)
        self.position = pos + len(recs)
        self._pending_ends.extend(ends)
        return list(zip(gaps, entries, strict=True))

    def _fold(self, recs: np.ndarray) -> None:
        """Fold the timings of ``recs`` (from ``latency_from`` on) into the histograms: single
        decisions into the first, each batch once (its row 0) into the second."""
        if self.latency_from is None:
            return
        pos = recs["position"]
        new = pos >= self._folded_to
        if new.any():
            t = recs["timings_ns"].astype(np.int64)
            single = recs["batch_rows"] == 0
            self._hists[0].record_array(t[new & single])
            self._hists[1].record_array(t[new & ~single & (recs["batch_row"] == 0)])
            self._folded_to = int(pos[-1]) + 1

    def latency_report(self) -> dict[str, Any] | None:
        """The histograms' growth since the last report, up to ring position ``to`` (None when
        this process folds no latency or nothing new came)."""
        if self.latency_from is None or self._folded_to == self._reported_to:
            return None
        self._reported_to = self._folded_to
        one, batch = (h.delta(*sent) for h, sent in zip(self._hists, self._sent, strict=True))
        return {"to": self._folded_to, "one": one, "batch": batch}

    def backlog(self) -> int:
        """Records written and not taken yet."""
        return self.reader.head() - self.position

    def mark(self, local_end: int | None) -> None:
        """The entry just taken ends at local tap position ``local_end`` (None: skipped)."""
        end = self._pending_ends.popleft() if self._pending_ends else self.position
        self._end = end
        if local_end is not None:
            self._marks.append((local_end, end))

    def settle(self, handed_over: int | None) -> None:
        """Store ``consumed``: the ring position after the last entry below local position
        ``handed_over`` (None: after everything taken)."""
        if handed_over is None:
            self._marks.clear()
            self.reader.advance(self._end)
            return
        done = None
        marks = self._marks
        while marks and marks[0][0] <= handed_over:
            done = marks.popleft()[1]
        if done is not None:
            self.reader.advance(done)
        elif not marks:  # nothing kept since: skipped duplicates only
            self.reader.advance(self._end)


def _last_stamps(audit: Any) -> set[tuple[int, bytes]]:
    """(mono ns, encoded keys) of every decision record in the newest segment that holds any."""
    from tailguard.audit.format import DecisionRecord
    from tailguard.audit.verify import read_entries

    infos = [i for i in audit._infos if i.records]
    if not infos:
        return set()
    dec = msgspec.msgpack.Decoder(DecisionRecord)
    enc = msgspec.msgpack.Encoder(enc_hook=plain)
    out = set()
    for _, _, payload, _ in read_entries(infos[-1].path):
        with contextlib.suppress(msgspec.ValidationError):  # headers, checkpoints, gaps
            r = dec.decode(payload)
            out.add((r.mono_ns, enc.encode(r.keys)))
    return out


def os_blocking_flush(out: Outbox, timeout_s: float = 5.0) -> None:
    """Write what ``out`` still holds, waiting for the reader up to ``timeout_s``."""
    end = time.monotonic() + timeout_s
    with contextlib.suppress(BrokenPipeError):  # the serving process is gone: nobody to tell
        while not out.flush() and time.monotonic() < end:
            select.select([], [out.fd], [], 0.05)


def main(argv: list[str] | None = None) -> int:
    """Run the side process described by the JSON object ``argv[0]``; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    config = json.loads(args[0])
    if config.get("nice"):
        os.nice(config["nice"])  # the serving process wins the cores when both are busy
    try:
        child = _Child(config)
    except (TailguardError, OSError) as exc:
        out = Outbox(config["status_fd"])
        out.put(frame(encoder().encode({"error": [getattr(exc, "code", "side_process_failed"), str(exc)]})))
        os_blocking_flush(out)
        return 2
    child.send({"ready": True})
    try:
        child.run(config["data_fd"])
    except BrokenPipeError:  # the serving process is gone: close what we hold
        child.svc.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
