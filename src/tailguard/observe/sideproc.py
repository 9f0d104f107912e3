"""The side path on another core: the audit log and the drift monitor in a side process.

In process, the audit log (~3 µs of encoding and hashing per decision) and the drift monitor
(~1.5 µs, plus window scoring) run on the serving core between requests, and the next
decision finds its caches cold: on a 7-20 µs decision that costs more than the work itself
(docs/observe.md, "Side process").  ``SideProcess`` moves both to a child process
(``tailguard.observe.sidechild``) that rebuilds the service's ``DecisionTap`` from a pipe
and runs the very same ``AuditLog`` and ``DriftMonitor`` on it.  What stays on the serving
core is the tap's one tuple per decision on the reply path and, on the side path, one
msgpack encoding per run of decisions and one non-blocking ``write``.

Nothing accepted is lost to a crash of the side process: the export reader *holds* every
entry in the serving tap until the child acknowledges it — ``ack`` is the position below
which the audit log has handed every record to the OS, which a kill -9 of the child does not
undo.  A dead child is restarted (back-off ``restart_backoff_s`` doubling to
``max_backoff_s``) and everything from the last ``ack`` is sent again; the restarted log
verifies its directory, cuts a torn last entry and continues the chain.  While no child
runs, decisions wait in the tap; when the tap is full they are counted as dropped and the
next frame carries the count, so the chain records the gap (``Dropped``) as in process.

The serving side never blocks on the child: frames that do not fit the pipe wait in an
``Outbox`` and entries behind them stay in the tap.  ``close`` (or ``Service.close``) sends
the rest, closes the pipe and waits for the child to close the log with its checkpoint.

Usage: ``SideProcess.attach(service, audit=AuditConfig(...), drift=True)`` — one side task
on the service (``drain`` exports, ``close`` finishes) plus, with drift, a ``RemoteDrift``
that the dashboard and ``/metrics`` read like a ``DriftMonitor`` (``drift_scores()``,
``statistics()``, ``observe_label``).  ``tailguard serve --side-process`` does this.

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
from dataclasses import asdict, dataclass, field
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Any

from tailguard.errors import TailguardError
from tailguard.observe.sidewire import (
    DECISIONS,
    LABELS,
    Inbox,
    Outbox,
    decoder,
    encoder,
    frame,
    singles_frame,
)
from tailguard.observe.tap import DECISION, singles

if TYPE_CHECKING:
    from tailguard.service import Service

__all__ = ["AuditConfig", "RemoteDrift", "SideProcess", "SideProcessError"]

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
                 status_interval_s: float = 0.05, start_timeout_s: float = 60.0, nice: int = 5,
                 restart_backoff_s: float = 0.1, max_backoff_s: float = 5.0) -> None:
        if audit is None and not drift:
            raise ValueError("a side process needs an audit log or drift (or both)")
        self.service = service
        self.audit, self.drift = audit, drift
        self.status_interval_s, self.start_timeout_s, self.nice = status_interval_s, start_timeout_s, nice
        self._status_ns = max(round(status_interval_s * 1e9), 1_000_000)
        self.backoff_s, self.max_backoff_s = restart_backoff_s, max_backoff_s
        self._backoff = restart_backoff_s
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
                self._tap.remove(self._reader)
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
        config = {"service_dir": str(self.service.directory), "data_fd": data_r, "status_fd": status_w,
                  "start": self._reader.hold, "drift": self.drift,
                  "status_interval_s": self.status_interval_s,
                  "audit": None if self.audit is None else asdict(self.audit), "resend": self.starts > 0}
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        config["nice"] = self.nice
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tailguard.observe.sidechild", json.dumps(config)],
                pass_fds=(data_r, status_w), stdin=subprocess.DEVNULL, env=env)
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
        r = self._reader
        assert r.hold is not None
        r.position = r.hold  # everything not acknowledged goes again, with the gaps before it
        self._carry += sum(n for _, n in self._missed)
        self._missed.clear()

    def _ensure_running(self) -> bool:
        proc = self._proc
        now = time.monotonic_ns()
        if proc is not None and (now < self._check_at or proc.poll() is None):
            if now >= self._check_at:  # a waitpid costs a syscall: at most every CHECK_NS
                self._check_at = now + CHECK_NS
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
        t = now()
        if t >= self._status_at:  # the child reports every status_interval_s: no sooner (a read
            self._status_at = t + self._status_ns  # costs a syscall, tens of µs with cold caches)
            self._read_status()
        out, r = self._out, self._reader
        assert out is not None
        try:
            if not out.flush():
                return 0
            if self.labels:
                batch = [self.labels.popleft() for _ in range(len(self.labels))]
                out.put(frame(self._enc.encode([LABELS, batch])))
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
            if msg.get("ready"):
                self.ready = True
                self._backoff = self.backoff_s
            if "error" in msg:
                code, message = msg["error"]
                self.last_error = f"{code}: {message}"
                self.failed_starts += 1
            if "ack" in msg:
                self._acknowledge(int(msg["ack"]))
            self.latest.update(msg)

    def _acknowledge(self, ack: int) -> None:
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
            if self._reader.pending() == 0 and out.flush():
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
        self._tap.remove(self._reader)

    # -- what the dashboard and the metrics read -------------------------------------------------
    def statistics(self) -> dict[str, Any]:
        """Counters of the export and the child's last status."""
        r = self._reader
        return {"running": self._proc is not None and self._proc.poll() is None, "ready": self.ready,
                "starts": self.starts, "restarts": self.restarts, "failed_starts": self.failed_starts,
                "frames": self.frames, "sent": self.sent, "unacknowledged": r.position - (r.hold or 0),
                "queued": r.pending(), "pid": None if self._proc is None else self._proc.pid,
                "last_error": self.last_error, "audit": self.latest.get("audit", {})}


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
