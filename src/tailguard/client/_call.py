"""One logical call's retry, failover and hedging decisions, free of I/O.

Both clients drive a ``Call`` the same way: pick an endpoint, send a copy, wait; on each
failure ask the call what to do.  The rules (docs/protocol.md, "Recommended client
behaviour"):

- connect failures move on to another endpoint and cost no retry (nothing was sent);
- status 10-19 is raised at once (the request is wrong);
- status 20-29 was not executed, so it is retried even when not idempotent: elsewhere at
  once when another endpoint is up, else after ``retry_after`` if that fits the time left;
- status 30-39 and a connection lost with the request in flight are retried only when the
  request is idempotent (the server may have acted on it); a lost connection marks its
  endpoint down only when another is up (otherwise the retry reconnects: to another worker
  behind the same listener);
- every retry needs a retry left (``max_retries``) and time left (client deadline and,
  when a budget was given, the budget); each copy carries only the budget still left.

What each copy teaches the endpoint's health and latency estimate (``Health.sent``,
``replied``, ``lost``, ``abandoned``) is recorded by the clients' wait loops, which know the
copies' send times.

Owned by the thread or task running the call; it touches shared state (health, stats) only
through their own thread-safe methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from tailguard.client._errors import (
    ClientError,
    ConnectFailed,
    ConnectionLost,
    Timeout,
    Unavailable,
    error_from_reply,
)
from tailguard.schema.wire import Reply, Request, Status

if TYPE_CHECKING:
    from tailguard.client._core import Core
    from tailguard.client._health import Slot

__all__ = ["Call"]

_DRAINING = int(Status.DRAINING)
_replace = msgspec.structs.replace


class Call:
    """The bookkeeping of one ``predict``/``predict_batch`` call (see the module docstring)."""

    __slots__ = ("attempts", "batch", "budget_end_ns", "core", "deadline_ns", "errors", "idempotent",
                 "last_index", "request", "retries_left", "start_ns", "timeout_s", "tried")

    def __init__(self, core: Core, request: Request, timeout_s: float, now_ns: int) -> None:
        self.core = core
        self.request = request
        self.batch = request.batch
        self.idempotent = request.idempotent
        self.start_ns = now_ns
        self.timeout_s = timeout_s
        self.deadline_ns = now_ns + round(timeout_s * 1e9)
        self.budget_end_ns = now_ns + request.budget_us * 1000 if request.budget_us else 0
        self.tried: set[int] = set()
        self.retries_left = core.max_retries
        self.errors: list[ClientError] = []
        self.attempts = 0
        self.last_index = -1

    # -- sending -----------------------------------------------------------------------------
    def wire(self, req_id: int, now_ns: int) -> Request | None:
        """The copy to send with ``req_id``, carrying the budget still left (None: spent)."""
        if not self.budget_end_ns:
            return _replace(self.request, id=req_id)
        left_us = (self.budget_end_ns - now_ns) // 1000
        if left_us <= 0:
            return None
        return _replace(self.request, id=req_id, budget_us=min(self.request.budget_us, left_us))

    def begin(self, slot: Slot) -> None:
        """A (non-hedge) copy goes to ``slot``: counts the attempt and any failover."""
        self.attempts += 1
        if self.last_index >= 0 and slot.index != self.last_index:
            self.core.stats.inc("failovers")
        self.last_index = slot.index
        self.tried.add(slot.index)

    def hedge_at_ns(self, slot: Slot, sent_ns: int) -> int:
        """When to hedge a copy sent to ``slot`` at ``sent_ns`` (0: never; never for a
        non-idempotent request, since both copies may run)."""
        window = self.core.window(slot)
        if window is None or not self.idempotent:
            return 0
        at = sent_ns + window.delay_ns()
        return at if at < self.deadline_ns else 0

    # -- failures ----------------------------------------------------------------------------
    def connect_failed(self, slot: Slot, error: ConnectFailed) -> None:
        """Connecting to ``slot`` failed (already marked down): try the next endpoint."""
        self.core.health.connect_failed(slot)
        self.errors.append(error)
        if self.last_index >= 0 and slot.index != self.last_index:
            self.core.stats.inc("failovers")
        self.last_index = slot.index
        self.tried.add(slot.index)

    def reply_failed(self, slot: Slot, reply: Reply, others_pending: bool) -> int:
        """A non-OK reply from ``slot``.  Returns -1 to keep waiting for another copy, else
        the ns to wait before the next attempt; raises the mapped error when it is final."""
        err = error_from_reply(reply, slot.label)
        n = reply.status
        if n == _DRAINING:
            self.core.health.mark_draining(slot)
        if n < 20 or n >= 40:
            raise err
        retry_after_ns = 0
        if n < 30 and n != _DRAINING and reply.retry_after_us > 0:
            retry_after_ns = reply.retry_after_us * 1000
            self.core.health.mark_busy(slot, retry_after_ns)
        if others_pending:
            self.errors.append(err)
            return -1
        return self._retry(err, safe=n < 30, retry_after_ns=retry_after_ns)

    def lost(self, slot: Slot, cause: BaseException, fatal: Reply | None, others_pending: bool) -> int:
        """The connection to ``slot`` closed with this call's copy in flight.  ``fatal`` is an
        id-0 error reply the server sent before closing (e.g. FRAME_TOO_LARGE): then that
        error is raised and the endpoint is not blamed."""
        blame = fatal is None or not 10 <= fatal.status < 20
        self.core.health.lost(slot, blame=blame)
        if not blame:
            assert fatal is not None
            raise error_from_reply(fatal, slot.label)
        # With another endpoint up, fail over to it (this one is down for its backoff).  With
        # none, do not mark it down: an endpoint is often several worker processes behind one
        # listener, and a worker's death takes only its connections — the retry reconnects
        # to a live worker (if the whole endpoint is gone, that connect fails and says so).
        if self.core.health.any_up({slot.index}):
            self.core.health.mark_down(slot, f"connection lost: {cause}")
        err = ConnectionLost(f"connection to {slot.label} lost with the request in flight: {cause}",
                             endpoint=slot.label)
        err.__cause__ = cause
        if others_pending:
            self.errors.append(err)
            return -1
        return self._retry(err, safe=False)

    def _retry(self, err: ClientError, *, safe: bool, retry_after_ns: int = 0) -> int:
        if not (safe or self.idempotent) or self.retries_left <= 0:
            raise err
        now = self.core.now()
        left = self.deadline_ns - now
        if self.budget_end_ns:
            left = min(left, self.budget_end_ns - now)
        if left <= 0:
            raise err
        wait = 0
        if retry_after_ns and not self.core.health.any_up(self.tried):
            if retry_after_ns >= left:
                raise err
            wait = retry_after_ns
        self.retries_left -= 1
        self.errors.append(err)
        self.core.stats.inc("retries")
        return wait

    # -- final errors --------------------------------------------------------------------------
    def timed_out(self) -> Timeout:
        """The error for a call whose deadline (or budget) passed with no usable reply."""
        self.core.stats.inc("timeouts")
        last = self.errors[-1] if self.errors else None
        now = self.core.now()
        if now < self.deadline_ns and self.budget_end_ns and now >= self.budget_end_ns:
            what = f"the budget of {self.request.budget_us} µs was spent before a copy could be sent"
        else:
            what = f"no reply within {self.timeout_s:.6g} s"
        err = Timeout(what + (f" (last error: {last})" if last is not None else ""))
        if last is not None:
            err.__cause__ = last
        return err

    def unavailable(self) -> Unavailable:
        """The error when no endpoint is up (and none passed a health check)."""
        return Unavailable("no endpoint could take the request", errors=self.errors,
                           retry_after_s=self.core.health.next_due_s())
