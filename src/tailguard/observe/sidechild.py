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
   audit chain records it) and hand labels to the drift monitor;
3. run the whole side path (no budget: this process has nothing else to do);
4. report, every ``status_interval_s``: ``ack`` (the serving tap's position below which every
   record is in the OS — what survives a kill -9 of this process — or, without an audit log,
   every entry consumed), the drift scores and statistics, and the audit counters.

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
from collections.abc import Iterable
from typing import Any

import msgspec
import numpy as np

from tailguard.audit.pii import plain
from tailguard.errors import TailguardError
from tailguard.observe.sidewire import (
    DECISIONS,
    LABELS,
    SINGLES,
    Inbox,
    Outbox,
    decode_decision,
    decoder,
    encoder,
    frame,
    singles_entries,
)
from tailguard.observe.tap import DECISION, ROWS, decided_ns

__all__ = ["POLL_S", "main"]

POLL_S = 0.002
FULL_STATUS_NS = 1_000_000_000  # drift scores and statistics go back at most once a second


class _Child:
    def __init__(self, config: dict[str, Any]) -> None:
        import tailguard

        self.out = Outbox(config["status_fd"])
        self.enc = encoder()
        svc = tailguard.load_service(config["service_dir"], record_latency=False, freeze_gc=False,
                                     offline=True)
        self.svc = svc
        self.tap = svc.decision_tap()
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
        msg: dict[str, Any] = {"received": self.received, "duplicates": self.duplicates}
        if self.audit is not None:
            a = self.audit
            msg["ack"] = a.handed_over + self.offset
            msg["audit"] = {"written": a.written, "dropped": a.dropped, "checkpoints": a.checkpoints,
                            "pending": a.pending}
        else:
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
            half = tap.capacity // 2
            written = self._written
            for e in entries:
                if written is not None:
                    if self._identity(e) in written:
                        self.duplicates += 1
                        self.offset += 1  # the serving tap's position, with no local entry
                        continue
                    self._written = written = None  # past the resent prefix
                if tap.backlog() >= half:
                    self.svc.run_side_path()
                tap.put(e)
                self.received += 1
        elif kind == LABELS and self.drift is not None:
            for key, label, decided_ns, prediction in msg[1]:
                k = tuple(key) if isinstance(key, list) else key
                self.drift.observe_label(k, label, decided_ns=decided_ns, prediction=prediction)

    def run(self, data_fd: int) -> None:
        inbox = Inbox(data_fd)
        dec = decoder()
        last = last_full = 0
        clock = time.monotonic_ns
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
            self.svc.run_side_path()
            now = clock()
            if now - last >= self.interval_ns:
                self.out.flush()
                if not len(self.out):  # the previous status went out: no pile-up behind a slow reader
                    full = now - last_full >= FULL_STATUS_NS
                    self.send(self.status(full=full))
                    if full:
                        last_full = now
                last = now
        self.svc.close()
        self.out.put(frame(self.enc.encode({**self.status(), "closed": True})))
        os_blocking_flush(self.out)


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
