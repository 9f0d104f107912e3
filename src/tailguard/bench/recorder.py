"""What a load run saw, per priority class: latency histograms, statuses, lateness, goodput.

Latency is the time from a request's *intended* send time to its reply (for a sequential run
the intended time is the send time), so a load generator or server that falls behind is
charged for it.  Latency percentiles are over OK replies (a shed answered in 20 us would
otherwise flatter the figures); every reply, whatever its status, counts as ``late`` when it
came after its class budget.  ``goodput`` is OK replies within budget per second of the
measured window.  ``server_us`` is the server's own time per reply when it reports one (binary
protocol: frame arrival to reply handed to the socket), which tells server time from queueing
in the client or the kernel.  Per reply the cost is one or two HdrHistogram records and a few
integer updates; everything else happens in ``report``.  Owned by one thread (the load generator's loop).

Status codes are the wire's ``Status`` values, plus client-side ones: ``NO_REPLY`` (none came
before the run's drain timeout), ``CONNECTION_LOST`` and, for HTTP answers that carry no
tailguard code, ``HTTP_BASE + http status``.
"""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from tailguard.bench.mix import PriorityMix
from tailguard.schema.wire import Status

__all__ = ["CONNECTION_LOST", "Buffered", "HTTP_BASE", "NO_REPLY", "ClassStats", "Recorder", "is_shed",
           "latency_summary", "status_name"]

NO_REPLY = -1
CONNECTION_LOST = -2
HTTP_BASE = 1000
_HIGHEST_NS = 600 * 1_000_000_000  # 10 minutes; longer latencies are recorded as this


def status_name(code: int) -> str:
    """The stable name of a status code (``"ok"``, ``"queue_full"``, ``"no_reply"``, ``"http_500"``)."""
    if code == NO_REPLY:
        return "no_reply"
    if code == CONNECTION_LOST:
        return "connection_lost"
    if code >= HTTP_BASE:
        return f"http_{code - HTTP_BASE}"
    try:
        return Status(code).code
    except ValueError:
        return f"status_{code}"


def is_shed(code: int) -> bool:
    """Whether ``code`` says the server would not take the request now (wire codes 20-29)."""
    return 20 <= code < 30


def _histogram() -> HdrHistogram:
    return HdrHistogram(1, _HIGHEST_NS, 3)


class Buffered:
    """An HdrHistogram (1 ns to 10 min, 3 significant digits) fed through a buffer.

    ``add`` appends to an ``array('q')`` (~50 ns, against ~1.3 µs for ``record_value`` in pure
    Python: at 50,000 replies a second that difference is a tenth of a core).  Every
    ``fold_at`` values, and whenever the histogram is read, the buffer is folded in: values
    are rounded down to their histogram bucket with numpy (the same 2048 sub-buckets per power
    of two the histogram uses), so each distinct bucket costs one ``record_value`` call.
    """

    __slots__ = ("_buf", "_hist", "fold_at")

    def __init__(self, fold_at: int = 1 << 16) -> None:
        self._hist = _histogram()
        self._buf = array("q")
        self.fold_at = fold_at

    def add(self, value_ns: int) -> None:
        """Record one value (ns); clamped to the histogram's range when folded."""
        buf = self._buf
        buf.append(value_ns)
        if len(buf) >= self.fold_at:
            self._fold()

    def _fold(self) -> None:
        if not self._buf:
            return
        v = np.clip(np.frombuffer(self._buf, dtype=np.int64), 1, _HIGHEST_NS)
        self._buf = array("q")
        # 3 significant digits: 2048 sub-buckets, so a bucket spans 2**max(0, bit_length - 11).
        shift = np.maximum(np.frexp(v.astype(np.float64))[1] - 11, 0)
        q = (v >> shift) << shift
        values, counts = np.unique(q, return_counts=True)
        record = self._hist.record_value
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            record(value, count)

    def histogram(self) -> HdrHistogram:
        """The histogram with everything added so far."""
        self._fold()
        return self._hist


def latency_summary(h: HdrHistogram) -> dict[str, float | int | None]:
    """Count, mean, p50/p90/p99/p99.9/p99.99 and max of a nanosecond histogram, in microseconds."""
    n = h.get_total_count()
    if n == 0:
        return {"n": 0, "mean": None, "p50": None, "p90": None, "p99": None, "p999": None,
                "p9999": None, "max": None}
    out: dict[str, float | int | None] = {"n": n, "mean": round(h.get_mean_value() / 1e3, 2)}
    for key, q in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9), ("p9999", 99.99)):
        out[key] = round(h.get_value_at_percentile(q) / 1e3, 2)
    out["max"] = round(h.get_max_value() / 1e3, 2)
    return out


class ClassStats:
    """Counters and the OK-latency histogram of one priority class."""

    __slots__ = ("budget_ns", "good", "hist", "late", "late_sent", "name", "ok", "replies", "sent",
                 "server", "statuses", "weight")

    def __init__(self, name: str, weight: float, budget_s: float | None) -> None:
        self.name = name
        self.weight = weight
        self.budget_ns = None if budget_s is None else round(budget_s * 1e9)
        self.hist = Buffered()
        self.server = Buffered()  # the server's own time per reply, when it reports one
        self.sent = 0
        self.replies = 0  # answers of any status, received before the drain timeout
        self.ok = 0
        self.good = 0  # OK and within budget from the intended time
        self.late = 0  # any reply after the budget, from the intended time
        self.late_sent = 0  # ... from the actual send time (the generator's own lag excluded)
        self.statuses: dict[int, int] = {}


class Recorder:
    """Per-class statistics of one run.  Requests intended before ``record_from_ns`` (the
    warm-up) are sent but not recorded."""

    def __init__(self, mix: PriorityMix, *, record_from_ns: int = 0) -> None:
        self.mix = mix
        self.classes = [ClassStats(c.name, c.weight, c.budget_s) for c in mix.classes]
        self.record_from_ns = record_from_ns
        self.send_lag = Buffered()  # actual send time - intended time
        self.completed = 0  # replies (recorded or not): for progress display
        self._win_n = 0  # OK latencies since the last ``take_window`` (progress display)
        self._win_sum = 0
        self._win_max = 0

    def on_send(self, cls: int, intended_ns: int, sent_ns: int) -> None:
        """A request of class ``cls`` went out at ``sent_ns`` (it was due at ``intended_ns``)."""
        if intended_ns < self.record_from_ns:
            return
        self.classes[cls].sent += 1
        self.send_lag.add(sent_ns - intended_ns)

    def on_reply(self, cls: int, status: int, intended_ns: int, sent_ns: int, done_ns: int) -> None:
        """The reply (or client-side failure ``status``) to a request arrived at ``done_ns``."""
        self.completed += 1
        if intended_ns < self.record_from_ns:
            return
        c = self.classes[cls]
        latency = done_ns - intended_ns
        c.statuses[status] = c.statuses.get(status, 0) + 1
        if status >= 0:
            c.replies += 1
        late = c.budget_ns is not None and latency > c.budget_ns
        if late:
            c.late += 1
        if c.budget_ns is not None and done_ns - sent_ns > c.budget_ns:
            c.late_sent += 1
        if status == 0:
            c.ok += 1
            c.hist.add(latency)
            self._win_n += 1
            self._win_sum += latency
            if latency > self._win_max:
                self._win_max = latency
            if not late:
                c.good += 1

    def counts(self) -> tuple[int, int, int]:
        """(sent, OK, not OK) so far over all classes: for a progress line."""
        sent = sum(c.sent for c in self.classes)
        ok = sum(c.ok for c in self.classes)
        bad = sum(sum(n for s, n in c.statuses.items() if s != 0) for c in self.classes)
        return sent, ok, bad

    def on_server_time(self, cls: int, intended_ns: int, server_ns: int) -> None:
        """The server's own time (ns) for a reply of class ``cls``, as it reported it."""
        if intended_ns >= self.record_from_ns:
            self.classes[cls].server.add(server_ns)

    def take_window(self) -> tuple[float | None, float | None]:
        """Mean and max OK latency (µs) since the last call, then start a new window.  Cheap:
        a percentile would walk the histograms and stall the sender for milliseconds."""
        if self._win_n == 0:
            return None, None
        out = (self._win_sum / self._win_n / 1e3, self._win_max / 1e3)
        self._win_n = self._win_sum = self._win_max = 0
        return out

    def report(self, window_s: float) -> dict[str, Any]:
        """The run's figures: totals and one entry per class; rates per second of ``window_s``."""
        window_s = max(window_s, 1e-9)
        total = _histogram()
        server = _histogram()
        classes: dict[str, Any] = {}
        sums = {"sent": 0, "replies": 0, "ok": 0, "good": 0, "late": 0, "late_sent": 0}
        statuses: dict[str, int] = {}
        for c in self.classes:
            total.add(c.hist.histogram())
            server.add(c.server.histogram())
            names = {status_name(s): n for s, n in sorted(c.statuses.items())}
            for k in sums:
                sums[k] += getattr(c, k)
            for k, n in names.items():
                statuses[k] = statuses.get(k, 0) + n
            classes[c.name or "default"] = {
                "weight": round(c.weight, 4),
                "budget_us": None if c.budget_ns is None else c.budget_ns / 1e3,
                "sent": c.sent, "replies": c.replies, "ok": c.ok, "good": c.good,
                "late": c.late, "late_sent": c.late_sent,
                "shed": sum(n for s, n in c.statuses.items() if is_shed(s)),
                "errors": sum(n for s, n in c.statuses.items() if s != 0 and not is_shed(s)),
                "statuses": names,
                "goodput_rps": round(c.good / window_s, 1),
                "latency_us": latency_summary(c.hist.histogram()),
                "server_us": latency_summary(c.server.histogram()),
            }
        return {
            **sums,
            "shed": sum(v["shed"] for v in classes.values()),
            "errors": sum(v["errors"] for v in classes.values()),
            "statuses": dict(sorted(statuses.items())),
            "throughput_rps": round(sums["replies"] / window_s, 1),
            "goodput_rps": round(sums["good"] / window_s, 1),
            "latency_us": latency_summary(total),
            "server_us": latency_summary(server),
            "send_lag_us": latency_summary(self.send_lag.histogram()),
            "classes": classes,
        }
