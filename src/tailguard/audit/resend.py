"""Replaying recorded requests through a running server (``tailguard audit replay --to``), at
the recorded pacing times a speed factor, to reproduce an incident.

The log is verified first (an unverified log is never replayed).  Each ``DecisionRecord``
becomes one request with the recorded entity keys and priority (a batch record becomes one
batch request), sent through ``tailguard.client.AsyncClient`` open-loop: record ``i`` is due
at ``start + (mono_ns[i] - mono_ns[0]) / speed`` whatever the server does, and its latency
is measured from that intended time, so a server that falls behind pays for it (speed 0:
as fast as possible, at most ``max_in_flight`` outstanding, latency from the send).  Each
answer is compared with the recorded outputs by their float64 bytes when the server answered
with the recorded model version; otherwise it is counted as ``other_version``.

The request context is not in the record (format version 1): give it with ``context`` (a
mapping for every record, or a function of the record); a record field named ``context``,
if the format gains one, is used first.  Stored features come from the server's online
store as it is now, so outputs reproduce only where those match the recorded ones.  A record
whose entity key the PII policy replaced (nil, or a ``pii1:`` token) is not sent: status
``pii_key``.

Runs on the calling thread (``resend``) or the running loop (``resend_async``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from tailguard.audit.format import DecisionRecord, Entry
from tailguard.audit.verify import read_entries, segments, verify
from tailguard.client import AsyncClient, BatchResult, ClientError, Result
from tailguard.errors import TailguardError

__all__ = ["Outcome", "ResendReport", "intended_offsets_ns", "resend", "resend_async"]

_DECODER = msgspec.msgpack.Decoder(Entry)
_PII_TOKEN = "pii1:"
ContextSource = Mapping[str, Any] | Callable[[DecisionRecord], Mapping[str, Any] | None] | None


@dataclass(frozen=True)
class Outcome:
    """One record's replay: the server's status code (``ok`` or the error code), latency in
    seconds, and the comparison: ``equal``, ``different``, ``other_version`` or
    ``not_compared`` (no answer), with the reason when not equal."""

    seq: int
    status: str
    latency_s: float
    compared: str
    reason: str = ""


@dataclass
class ResendReport:
    """Counts by status and by comparison, latency percentiles (s), decisions the log
    recorded as dropped, and every record's ``Outcome`` in log order."""

    target: str = ""
    speed: float = 1.0
    records: int = 0
    dropped: int = 0
    elapsed_s: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, compared: str) -> int:
        """Records whose comparison is ``compared``."""
        return sum(o.compared == compared for o in self.outcomes)

    @property
    def ok(self) -> bool:
        """Every record was answered OK and none differs from the recorded outputs."""
        return self.statuses.get("ok", 0) == self.records and self.count("different") == 0

    def latency_s(self) -> dict[str, float]:
        """p50, p90, p99, p99.9 and max of the latencies, in seconds."""
        lat = np.array([o.latency_s for o in self.outcomes], dtype=np.float64)
        if not lat.size:
            return {}
        q = np.percentile(lat, [50, 90, 99, 99.9])
        return {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2]), "p999": float(q[3]),
                "max": float(lat.max())}

    def as_dict(self, per_record: bool = False) -> dict[str, Any]:
        """JSON-friendly form: the first 100 records that are not equal, or every record."""
        shown = self.outcomes if per_record else [o for o in self.outcomes if o.compared != "equal"][:100]
        return {"ok": self.ok, "target": self.target, "speed": self.speed, "records": self.records,
                "dropped": self.dropped, "elapsed_s": round(self.elapsed_s, 6), "statuses": self.statuses,
                "equal": self.count("equal"), "different": self.count("different"),
                "other_version": self.count("other_version"), "not_compared": self.count("not_compared"),
                "latency_s": self.latency_s(),
                "records_detail" if per_record else "not_equal": [asdict(o) for o in shown]}


def intended_offsets_ns(mono_ns: list[int], speed: float) -> list[int]:
    """When each record is due, in ns after the first: the recorded gaps divided by ``speed``
    (0: all at once).  A clock that went backwards (records of a restarted writer) counts
    as no gap."""
    if speed < 0:
        raise ValueError(f"speed must be >= 0, got {speed}")
    out, t, prev = [], 0.0, mono_ns[0] if mono_ns else 0
    for m in mono_ns:
        if speed > 0:
            t += max(0, m - prev) / speed
        prev = m
        out.append(round(t))
    return out


def resend(directory: str | Path, key: bytes, target: str, **options: Any) -> ResendReport:
    """``resend_async`` on a fresh event loop in the calling thread."""
    return asyncio.run(resend_async(directory, key, target, **options))


async def resend_async(directory: str | Path, key: bytes, target: str, *, speed: float = 1.0,
                       context: ContextSource = None, budget_us: int | None = None,
                       max_in_flight: int = 1024, timeout_s: float = 5.0,
                       service: str | None = None) -> ResendReport:
    """Send every recorded request of ``directory`` to ``target`` (``tcp://host:port`` or
    ``unix:///path``) at ``speed`` times the recorded pace; see the module docstring."""
    check = verify(directory, key, service)
    if not check.ok:
        raise TailguardError(f"the audit log does not verify, refusing to replay: {check.problem}")
    records = list(_records(Path(directory)))
    report = ResendReport(target=target, speed=speed, dropped=check.dropped, records=len(records))
    due = intended_offsets_ns([r.mono_ns for r in records], speed)
    slots = asyncio.Semaphore(max_in_flight)
    client = AsyncClient(target, timeout_s=timeout_s, max_retries=0, connect_timeout_s=timeout_s)
    now = time.perf_counter_ns
    try:
        names = list((await client.welcome()).outputs)
        results: list[asyncio.Task[Outcome]] = []
        start = now()
        for rec, offset in zip(records, due, strict=True):
            t = start + offset
            await _until(t)
            await slots.acquire()
            sent = now() if speed == 0 else t
            ctx = _context(rec, context)
            results.append(asyncio.create_task(_one(client, rec, ctx, budget_us, names, sent, slots)))
        report.outcomes = list(await asyncio.gather(*results))
        report.elapsed_s = (now() - start) / 1e9
    finally:
        await client.aclose()
    for o in report.outcomes:
        report.statuses[o.status] = report.statuses.get(o.status, 0) + 1
    return report


def _records(directory: Path) -> Iterator[DecisionRecord]:
    for path in segments(directory):
        for _, _, payload, _ in read_entries(path):
            entry = _DECODER.decode(payload)
            if type(entry) is DecisionRecord:
                yield entry


def _context(rec: DecisionRecord, source: ContextSource) -> Mapping[str, Any] | None:
    recorded = getattr(rec, "context", None)
    if recorded is not None:
        return recorded  # type: ignore[no-any-return]
    if source is None or isinstance(source, Mapping):
        return source
    return source(rec)


async def _until(t_ns: int) -> None:
    """Wait for ``t_ns`` (perf_counter): sleep while far, then yield to the loop until due
    (the loop's timers round to milliseconds; replies are read while we yield)."""
    while (gap := t_ns - time.perf_counter_ns()) > 0:
        await asyncio.sleep((gap - 2_000_000) / 1e9 if gap > 3_000_000 else 0)


def _is_batch(keys: Any) -> bool:
    if isinstance(keys, list):
        return True
    return isinstance(keys, dict) and any(isinstance(v, list) for v in keys.values())


def _pii_replaced(keys: Any) -> bool:
    """Whether the PII policy replaced a key (``drop``: nil; ``hash``: a ``pii1:`` token)."""
    if isinstance(keys, dict):
        return any(_pii_replaced(v) for v in keys.values())
    if isinstance(keys, list):
        return any(_pii_replaced(v) for v in keys)
    return keys is None or (isinstance(keys, str) and keys.startswith(_PII_TOKEN))


async def _one(client: AsyncClient, rec: DecisionRecord, ctx: Mapping[str, Any] | None,
               budget_us: int | None, names: list[str], sent_ns: int, slots: asyncio.Semaphore) -> Outcome:
    if _pii_replaced(rec.keys):
        slots.release()
        return Outcome(rec.seq, "pii_key", 0.0, "not_compared",
                       "an entity key was replaced by the PII policy")
    try:
        res: Result | BatchResult
        if _is_batch(rec.keys):
            res = await client.predict_batch(rec.keys, ctx, priority=rec.priority or None,
                                             budget_us=budget_us)
            got = np.column_stack([res.outputs[n] for n in names]) if names else np.empty((len(res), 0))
        else:
            res = await client.predict(rec.keys, ctx, priority=rec.priority or None, budget_us=budget_us)
            got = np.array([[res.outputs[n] for n in names]], dtype=np.float64)
    except ClientError as exc:
        return Outcome(rec.seq, exc.code, (time.perf_counter_ns() - sent_ns) / 1e9, "not_compared", str(exc))
    finally:
        slots.release()
    latency_s = (time.perf_counter_ns() - sent_ns) / 1e9
    if res.model_version != rec.model_version:
        return Outcome(rec.seq, "ok", latency_s, "other_version",
                       f"recorded by {rec.model_version!r}, served by {res.model_version!r}")
    want = np.frombuffer(rec.outputs, dtype=np.float64).reshape(len(rec.rungs), rec.n_outputs)
    got = np.ascontiguousarray(got, dtype=np.float64)
    if want.shape != got.shape or want.tobytes() != got.tobytes():
        return Outcome(rec.seq, "ok", latency_s, "different",
                       f"recorded {want.tolist()}, served {got.tolist()}")
    return Outcome(rec.seq, "ok", latency_s, "equal")
