"""The side path on another core: the audit log and the drift monitor in a side process.

In process, the audit log (~3 µs of encoding and hashing per decision) and the drift monitor
(~1.5 µs, plus window scoring) run on the serving core between requests, and the next
decision finds its caches cold: on a 7-20 µs decision that costs more than the work itself
(docs/audit.md, "In a side process").  ``SideProcess`` moves both to a child process
(``tailguard.observe.sidechild``) that rebuilds the decisions in a ``DecisionTap`` of its own
and runs the very same ``AuditLog`` and ``DriftMonitor`` on it.  Two transports:

* ``ring`` (``auto`` where the writer compiles): the service's ``DecisionRing``
  (``tailguard.observe.ring``) in shared memory — a compiled hook copies each decision into a
  record, the child reads the records and moves the ring's ``consumed`` itself, and also folds
  the latency histograms, sent back with its status (``LatencyRecorder.merge``).  Nothing per
  decision is left on the serving core but the hook; labels and long keys go on the pipe
  (``TABLES``).  A crash of the child loses nothing: ``consumed`` only passes records the audit
  log has handed to the OS, and the writer never overwrites a record at or above it.
* ``pipe``: the service's ``DecisionTap`` (one tuple per decision on the reply path) exported
  on the side path, one msgpack encoding per run of decisions and one non-blocking ``write``.

With the pipe, nothing accepted is lost to a crash of the side process either: the export
reader *holds* every entry in the serving tap until the child acknowledges it — ``ack`` is
the position below which the audit log has handed every record to the OS, which a kill -9 of
the child does not undo.  A dead child is restarted (back-off ``restart_backoff_s`` doubling to
``max_backoff_s``) and everything from the last ``ack`` is sent again; the restarted log
verifies its directory, cuts a torn last entry and continues the chain.  While no child
runs, decisions wait in the tap; when the tap is full they are counted as dropped and the
next frame carries the count, so the chain records the gap (``Dropped``) as in process.

The child runs at nice +5 and, with the ring, under ``SCHED_IDLE`` while it keeps up
(``idle``; ``sidechild.Priority``): a serving process woken by a request takes its CPU back
at once.  Past half a ring of backlog it returns to the normal policy until it has caught up.

The serving side never blocks on the child: frames that do not fit the pipe wait in an
``Outbox`` and entries behind them stay in the tap.  ``close`` (or ``Service.close``) sends
the rest, closes the pipe and waits for the child to close the log with its checkpoint.

Usage: ``SideProcess.attach(service, audit=AuditConfig(...), drift=True)`` — one side task
on the service (``drain`` exports, ``close`` finishes) plus, with drift, a ``RemoteDrift``
that the dashboard and ``/metrics`` read like a ``DriftMonitor`` (``drift_scores()``,
``statistics()``, ``observe_label``).  ``tailguard serve`` does this by default where a core
is to spare (``serve.app.side_process_default``; ``--side-process`` / ``--no-side-process``).

Owner: the service's owner thread (``drain``, ``close``); ``RemoteDrift.observe_label`` from
any thread (a deque).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any

from tailguard.errors import TailguardError
from tailguard.observe.sidewire import (
    DECISIONS,
    LABELS,
    TABLES,
    Inbox,
    Outbox,
    decoder,
    encoder,
    frame,
    singles_frame,
)
from tailguard.observe.tap import DECISION, singles

if TYPE_CHECKING:
    from tailguard.observe.ring import DecisionRing
    from tailguard.service import Service

__all__ = ["TRANSPORTS", "AuditConfig", "RemoteDrift", "SideProcess", "SideProcessError"]

#: How decisions reach the side process: ``ring`` — a ``DecisionRing`` in shared memory written by
#: a compiled reply-path hook, read by the child directly (nothing per decision on this core but
#: the hook); ``pipe`` — the ``DecisionTap`` here, exported in msgpack frames on the side path;
#: ``auto`` — the ring when its writer compiles here, else the pipe.
TRANSPORTS = ("auto", "ring", "pipe")

_F_SETPIPE_SZ = 1031  # fcntl on Linux: a 1 MiB pipe holds ~4,000 decisions
_RUN = 512  # entries per frame
#: At most one liveness check (a waitpid) and one status read per these many ns: a system call
#: on the serving core costs 10-20 µs with cold caches.
CHECK_NS = 50_000_000
_DECISION, _VERSION = itemgetter(DECISION), attrgetter("model_version")


class SideProcessError(TailguardError):
    """The side process could not start (``code``: the child's error code, e.g. ``audit_invalid``)."""

    code = "side_process_failed"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code:
            self.code = code


@dataclass
class AuditConfig:
    """The audit log the side process opens (``tailguard.audit.admin.open_log``'s arguments)."""

    directory: str
    key_file: str
    signing_key_file: str | None = None
    subject_keys_dir: str | None = None
    keep_days: float | None = None
    keep_segments: int | None = None
    #: Copy the log to this NATS server's JetStream (``tailguard.audit.offbox``).
    nats: str | None = None
    nats_stream: str | None = None
    #: More ``AuditLog`` options (``fsync_interval_s``, ``segment_bytes``...).
    options: dict[str, Any] = field(default_factory=dict)


class SideProcess:
    """A service's audit log and drift monitor in a child process (see the module docstring)."""

    def __init__(self, service: Service, *, audit: AuditConfig | None = None, drift: bool = False,
                 status_interval_s: float | None = None, start_timeout_s: float = 60.0, nice: int = 5,
                 restart_backoff_s: float = 0.1, max_backoff_s: float = 5.0, transport: str = "auto",
                 ring_capacity: int = 1 << 14, batch_interval_s: float | None = None,
                 batch_records: int | None = None, idle: bool = True,
                 clock: Callable[[], int] | None = None) -> None:
        if audit is None and not drift:
            raise ValueError("a side process needs an audit log or drift (or both)")
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown side-process transport {transport!r}; one of {TRANSPORTS}")
        self.service = service
        self.audit, self.drift = audit, drift
        self.start_timeout_s, self.nice = start_timeout_s, nice
        #: With the ring: the child under ``SCHED_IDLE`` while it keeps up (``sidechild.Priority``).
        self.idle = idle
        #: ns; paces the status reads, liveness checks and restarts (a test or benchmark injects its own).
        self.clock = clock or time.monotonic_ns
        #: With the ring: how often the child takes the records (``sidechild.BATCH_S`` if None).
        self.batch_interval_s = batch_interval_s
        #: With the ring: take them sooner once this many wait (a quarter of the ring if None).
        self.batch_records = batch_records
        if batch_records is not None and not 0 < batch_records <= ring_capacity:
            raise ValueError(f"batch_records must be in 1..ring_capacity ({ring_capacity}), "
                             f"not {batch_records}")
        self.backoff_s, self.max_backoff_s = restart_backoff_s, max_backoff_s
        self._backoff = restart_backoff_s
        if transport == "auto":
            from tailguard.observe.ring import compile_writer

            transport = "ring" if compile_writer()[0] is not None else "pipe"
        self.transport = transport
        # How often the child reports and this side reads it (a read and a decode with cold caches
        # on the serving core).  The pipe transport holds every decision until acknowledged there:
        # 50 ms; with the ring the child moves ``consumed`` itself and the status only carries
        # figures (drift, audit counters, latency histograms): 250 ms.
        if status_interval_s is None:
            status_interval_s = 0.25 if transport == "ring" else 0.05
        self.status_interval_s = status_interval_s
        self._status_ns = max(round(status_interval_s * 1e9), 1_000_000)
        self._check_ns = max(CHECK_NS, self._status_ns)  # a liveness check no more often than that
        self._ring: DecisionRing | None = None
        if transport == "ring":
            ring = service.decision_ring(ring_capacity)
            self._ring, self._ring_start = ring, ring.head
            lat = service.latency
            self._latency = lat if lat is not None and lat.reads_ring else None
            if self._latency is not None:  # the child folds the timings and sends histograms back
                self._latency.bind_ring(ring, remote=True)
            self._ring_reader = ring.reader()
            self._tables_sent = (0, 0)  # versions, priorities the child has
            self._ring_figures: tuple[int, int, int] | None = None
            self._spill_from = 0  # spilled keys from this position on not sent yet
        else:
            tap = service.decision_tap()
            self._tap = tap
            self._reader = tap.reader()
            self._reader.hold = self._reader.position
        self._enc, self._dec = encoder(), decoder()
        self._known: dict[str, str] = {}  # version labels sent, with their hashes
        self._missed: deque[tuple[int, int]] = deque()  # (position, drops) sent but not acknowledged
        self._carry = 0  # drops sent to a child that died before acknowledging them
        self.labels: deque[list[Any]] = deque()
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: Outbox | None = None
        self._in: Inbox | None = None
        self._restart_at = self._check_at = self._status_at = 0
        self.ready = False
        self.closed = False
        #: The child's latest status (``ack``, ``drift_scores``, ``drift``, ``audit``...).
        self.latest: dict[str, Any] = {}
        self.starts = self.restarts = self.failed_starts = self.frames = self.sent = 0
        self.statuses = 0  # messages read from the child
        self.last_error = ""

    @classmethod
    def attach(cls, service: Service, **options: Any) -> SideProcess:
        """Start a side process for ``service`` and attach it (and a ``RemoteDrift`` with
        drift) as side tasks; raises ``SideProcessError`` when the child cannot start."""
        sp = cls(service, **options).start()
        service.attach(sp)
        if sp.drift:
            service.attach(RemoteDrift(sp))
        return sp

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> SideProcess:
        """Spawn the child and wait until it runs (``SideProcessError`` with its code if not)."""
        self._spawn()
        end = time.monotonic() + self.start_timeout_s
        while not self.ready:
            assert self._in is not None and self._proc is not None
            select.select([self._in.fd], [], [], 0.05)
            self._read_status()
            if self.ready:
                break
            if self._proc.poll() is not None or self._in.eof or time.monotonic() > end:
                self._reap()
                self.closed = True
                self._forget()
                why = self.last_error or ("did not start in time" if time.monotonic() > end else "exited")
                raise SideProcessError(f"the side process of {self.service.spec.name} failed to start: {why}",
                                       self.latest.get("error", [None])[0])
        return self

    def _spawn(self) -> None:
        data_r, data_w = os.pipe()
        status_r, status_w = os.pipe()
        with contextlib.suppress(OSError):  # not Linux, or over /proc/sys/fs/pipe-max-size
            import fcntl

            fcntl.fcntl(data_w, _F_SETPIPE_SZ, 1 << 20)
        config: dict[str, Any] = {
            "service_dir": str(self.service.directory), "data_fd": data_r, "status_fd": status_w,
            "drift": self.drift, "status_interval_s": self.status_interval_s,
            "audit": None if self.audit is None else asdict(self.audit), "resend": self.starts > 0}
        fds = [data_r, status_w]
        if self._ring is not None:  # the child reads the ring from where the last one left off
            config["ring_fd"] = self._ring.fd
            fds.append(self._ring.fd)
            if self.batch_interval_s is not None:
                config["batch_interval_s"] = self.batch_interval_s
            if self.batch_records is not None:
                config["batch_records"] = self.batch_records
            config["idle"] = self.idle
            if self._latency is not None:
                # Timings a dead child folded but never reported are gone with it when the ring
                # let them go (below ``consumed``): counted as dropped, the rest folded anew.
                self._latency.skip_to(self._ring_reader.consumed())
                config["latency_from"] = self._latency.ring_position
            self._tables_sent, self._spill_from = (0, 0), 0  # a new child knows no labels yet
        else:
            config["start"] = self._reader.hold
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        config["nice"] = self.nice
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tailguard.observe.sidechild", json.dumps(config)],
                pass_fds=fds, stdin=subprocess.DEVNULL, env=env)
        finally:
            os.close(data_r)
            os.close(status_w)
        self._out, self._in = Outbox(data_w), Inbox(status_r)
        self.ready = False
        self.starts += 1

    def _reap(self) -> None:
        """Forget a dead (or stuck) child: close the pipes, resend from the last ack later."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait()
        for end in (self._out, self._in):
            if end is not None:
                with contextlib.suppress(OSError):
                    os.close(end.fd)
        self._proc = self._out = self._in = None
        self.ready = False
        if self._ring is not None:  # the next child reads the ring from ``consumed`` on its own
            return
        r = self._reader
        assert r.hold is not None
        r.position = r.hold  # everything not acknowledged goes again, with the gaps before it
        self._carry += sum(n for _, n in self._missed)
        self._missed.clear()

    def _ensure_running(self) -> bool:
        proc = self._proc
        now = self.clock()
        if proc is not None and (now < self._check_at or proc.poll() is None):
            if now >= self._check_at:  # a waitpid costs a syscall: at most every CHECK_NS
                self._check_at = now + self._check_ns
            return True
        if proc is not None:  # it died: count, then restart after the back-off
            self._reap()
            self.restarts += 1
            self._restart_at = now + round(self._backoff * 1e9)
            self._backoff = min(self._backoff * 2, self.max_backoff_s)
        if now < self._restart_at:
            return False
        self._spawn()
        return True

    # -- side task ---------------------------------------------------------------------------------
    def drain(self, budget_ns: int | None = None) -> int:
        """Read the child's status, then send queued decisions (and labels) for about
        ``budget_ns`` (None: all that fits the pipe).  Returns the entries sent."""
        if self.closed or not self._ensure_running():
            return 0
        now = time.perf_counter_ns
        end = None if budget_ns is None else now() + budget_ns
        t = self.clock()
        if t >= self._status_at:  # the child reports every status_interval_s: no sooner (a read
            self._status_at = t + self._status_ns  # costs a syscall, tens of µs with cold caches)
            self._read_status()
        out = self._out
        assert out is not None
        try:
            if not out.flush():
                return 0
            if self._ring is not None:
                self._send_tables(out)
            if self.labels:
                batch = [self.labels.popleft() for _ in range(len(self.labels))]
                out.put(frame(self._enc.encode([LABELS, batch])))
            if self._ring is not None:  # the decisions are in the ring: the child reads them
                return 0
            r = self._reader
            n = 0
            while True:
                run = r.run(_RUN)
                if not run:
                    break
                pos = r.position
                missed = r.missed() + self._carry
                self._carry = 0
                if missed:
                    self._missed.append((pos, missed))
                hashes = self._new_hashes(run)
                msg = (singles_frame(pos, missed, hashes, run) if singles(run)
                       else [DECISIONS, pos, missed, hashes, run])
                out.put(frame(self._enc.encode(msg)))
                r.advance(pos + len(run))
                n += len(run)
                self.frames += 1
                if len(out) or (end is not None and now() >= end):
                    break
        except BrokenPipeError:  # the child died: the next drain restarts it and sends again
            out.drop()
            return 0
        self.sent += n
        return n

    def _send_tables(self, out: Outbox) -> None:
        """Send the ring's labels and long keys the child does not have yet (``TABLES``)."""
        ring = self._ring
        assert ring is not None
        nv, npr = self._tables_sent
        versions, priorities = ring.versions, ring.priorities
        spilled = ring.spilled
        fresh = {p: b for p, b in spilled.items() if p >= self._spill_from} if spilled else {}
        if nv == len(versions) and npr == len(priorities) and not fresh:
            return
        new_versions = list(versions[nv:])
        hashes: dict[str, str] = {}
        if new_versions:
            from tailguard.audit.log import model_hashes

            known = model_hashes(self.service.engine)
            hashes = {v: known.get(v, "") for v in new_versions}
        out.put(frame(self._enc.encode([TABLES, nv, new_versions, hashes, npr, list(priorities[npr:]),
                                        fresh])))
        self._tables_sent = (len(versions), len(priorities))
        self._spill_from = ring.head

    def _forget(self) -> None:
        """Stop holding decisions for a child that will not read them (the ring leaves the
        engine: with no reader it would only fill up)."""
        if self._ring is None:
            self._tap.remove(self._reader)
        else:
            self._ring_figures = self._ring_now()  # what ``statistics`` reports from now on
            self._ring_reader.close()
            self.service.release_ring()

    def _ring_now(self) -> tuple[int, int, int]:
        """The ring's head, consumed and dropped (the last ones once it is released)."""
        if self._ring_figures is not None:
            return self._ring_figures
        ring = self._ring
        assert ring is not None
        return ring.head, self._ring_reader.consumed(), ring.dropped

    def _new_hashes(self, run: list[Any]) -> dict[str, str] | None:
        known = self._known
        new = set(map(_VERSION, map(_DECISION, run))) - known.keys()  # C-level passes: ~4x a comprehension
        if not new:
            return None
        from tailguard.audit.log import model_hashes

        hashes = model_hashes(self.service.engine)
        fresh = {v: hashes.get(v, "") for v in new}
        known.update(fresh)
        return fresh

    def _read_status(self) -> None:
        inbox = self._in
        if inbox is None:
            return
        inbox.read_all()
        for f in inbox.frames():
            msg = self._dec.decode(f)
            self.statuses += 1
            if msg.get("ready"):
                self.ready = True
                self._backoff = self.backoff_s
            if "error" in msg:
                code, message = msg["error"]
                self.last_error = f"{code}: {message}"
                self.failed_starts += 1
            if "ack" in msg:
                self._acknowledge(int(msg["ack"]))
            lat = msg.pop("latency", None)
            if lat is not None and self._ring is not None and self._latency is not None:
                self._latency.merge(lat)
            self.latest.update(msg)

    def _acknowledge(self, ack: int) -> None:
        if self._ring is not None:  # the child moves the ring's ``consumed`` itself
            return
        r = self._reader
        if r.hold is not None and ack > r.hold:
            r.hold = min(ack, r.position)
            while self._missed and self._missed[0][0] < r.hold:
                self._missed.popleft()
            self._tap.release()

    def close(self) -> None:
        """Send everything still queued, close the pipe and wait for the child to close the log
        (restarting it first if it is dead).  Idempotent."""
        if self.closed:
            return
        deadline = time.monotonic() + self.start_timeout_s
        tries = self.failed_starts + 3
        while time.monotonic() < deadline and self.failed_starts < tries:
            self._restart_at = 0
            if not self._ensure_running():
                continue
            self.drain(None)
            out = self._out
            assert out is not None
            if (self._ring is not None or self._reader.pending() == 0) and out.flush():
                break
            select.select([], [out.fd], [], 0.05)
        self.closed = True
        out, inbox, proc = self._out, self._in, self._proc
        if out is not None:
            os.close(out.fd)  # EOF: the child closes its tasks and exits
            self._out = None
        if proc is not None:
            try:
                proc.wait(timeout=self.start_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if inbox is not None:
            self._read_status()
            os.close(inbox.fd)
            self._in = None
        if self.latest.get("ack") is not None:
            self._acknowledge(int(self.latest["ack"]))
        self._forget()

    # -- what the dashboard and the metrics read -------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The current (or last) child's process id; None before the first start."""
        return None if self._proc is None else self._proc.pid

    def statistics(self) -> dict[str, Any]:
        """Counters of the export and the child's last status."""
        out = {"running": self._proc is not None and self._proc.poll() is None, "ready": self.ready,
               "starts": self.starts, "restarts": self.restarts, "failed_starts": self.failed_starts,
               "frames": self.frames, "transport": self.transport, "pid": self.pid,
               "last_error": self.last_error, "audit": self.latest.get("audit", {}),
               "idle": self.latest.get("idle"), "escalations": self.latest.get("escalations", 0),
               "priority_error": self.latest.get("priority_error")}
        ring = self._ring
        if ring is not None:
            head, done, dropped = self._ring_now()
            out.update(sent=head - self._ring_start, unacknowledged=head - done, queued=head - done,
                       ring_dropped=dropped, ring_capacity=ring.capacity, compiled=ring.compiled,
                       fallback_reason=ring.fallback_reason)
        else:
            r = self._reader
            out.update(sent=self.sent, unacknowledged=r.position - (r.hold or 0), queued=r.pending())
        return out


class RemoteDrift:
    """The side process's drift monitor as the serving process sees it: the latest scores and
    statistics the child reported, and ``observe_label`` forwarded to it."""

    def __init__(self, side: SideProcess) -> None:
        self.side = side
        self.labels_dropped = 0
        self.label_capacity = side.service.spec.drift.label_capacity

    def drift_scores(self) -> dict[str, float]:
        """The latest value of every signal (as ``DriftMonitor.drift_scores``)."""
        return dict(self.side.latest.get("drift_scores", {}))

    def statistics(self) -> dict[str, Any]:
        """The child monitor's statistics, and ``side_process`` counters."""
        return {**self.side.latest.get("drift", {}), "side_process": self.side.statistics()}

    def observe_label(self, key: Any, label: float, *, decided_ns: int | None = None,
                      prediction: float | None = None) -> None:
        """A delayed label for the decision on ``key`` (see ``DriftMonitor.observe_label``),
        sent to the side process with the next export."""
        if len(self.side.labels) >= self.label_capacity:
            self.labels_dropped += 1
            return
        self.side.labels.append([key, float(label), decided_ns, prediction])

    def drain(self, budget_ns: int | None = None) -> int:
        """Nothing to do here (the side process does it)."""
        return 0

    def close(self) -> None:
        """Nothing to release (the side process closes itself)."""
