"""What the clients return: ``Result`` for one entity, ``BatchResult`` for many.

Both are built from a ``Reply`` and the ``Welcome`` of the connection that carried it (which
names the outputs and rungs), plus what only the client knows: the endpoint that answered,
whether a hedge was sent and won, how many attempts were made and the latency it saw.
Immutable ``gc=False`` structs: they hold no reference cycles.
"""

from __future__ import annotations

import msgspec
import numpy as np

from tailguard.decision import Flag
from tailguard.schema.wire import TIMING_NAMES, Reply, Status, Welcome

__all__ = ["BatchResult", "Result", "batch_result", "single_result"]


class Result(msgspec.Struct, frozen=True, gc=False):
    """One entity's answer.

    ``outputs``: value by output name.  ``rung``: the ladder rung that answered.  ``flags``:
    why it is not a plain primary answer (``tailguard.Flag``).  ``timings_ns``: the server's
    timings in ns by ``TIMING_NAMES`` (queue, ingest, features, inference, delivery,
    server_total).  ``endpoint``: the canonical address that answered.  ``hedged``: a second
    copy was sent; ``hedge_won``: that copy's reply is this one.  ``attempts``: copies sent
    in turn (1 = no retry; hedges not counted).  ``latency_s``: seconds from the call to the
    reply, as the client saw it.
    """

    outputs: dict[str, float]
    model_version: str
    rung: str
    flags: Flag
    status: Status
    timings_ns: dict[str, int]
    endpoint: str
    hedged: bool = False
    hedge_won: bool = False
    attempts: int = 1
    latency_s: float = 0.0

    def output(self, name: str) -> float:
        """One output by name (``KeyError`` names the unknown output)."""
        return self.outputs[name]


class BatchResult(msgspec.Struct, frozen=True, gc=False):
    """Answers for N entities; row ``i`` answers ``keys[i]``.

    ``outputs``: a float64 array of N values per output name.  ``rungs`` and ``flags``: one
    entry per row.  The other fields are as in ``Result``.
    """

    outputs: dict[str, np.ndarray]
    model_version: str
    rungs: tuple[str, ...]
    flags: tuple[Flag, ...]
    status: Status
    timings_ns: dict[str, int]
    endpoint: str
    hedged: bool = False
    hedge_won: bool = False
    attempts: int = 1
    latency_s: float = 0.0

    def __len__(self) -> int:
        return len(self.rungs)

    def output(self, name: str) -> np.ndarray:
        """One output's per-row values by name."""
        return self.outputs[name]


def _rung_name(welcome: Welcome, index: int) -> str:
    rungs = welcome.rungs
    return rungs[index] if 0 <= index < len(rungs) else f"rung{index}"


def _status(number: int) -> Status:
    try:
        return Status(number)
    except ValueError:  # an "answered" status (1-9) this build does not know yet
        return Status.OK


def single_result(
    reply: Reply, welcome: Welcome, endpoint: str, hedged: bool, hedge_won: bool, attempts: int,
    latency_s: float,
) -> Result:
    """The ``Result`` of a one-entity ``reply``."""
    names = welcome.outputs
    return Result(
        dict(zip(names, reply.outputs, strict=False)),
        reply.model_version,
        _rung_name(welcome, reply.rungs[0]) if reply.rungs else "",
        Flag(reply.flags[0]) if reply.flags else Flag.NONE,
        _status(reply.status),
        dict(zip(TIMING_NAMES, reply.timings_ns, strict=False)),
        endpoint,
        hedged,
        hedge_won,
        attempts,
        latency_s,
    )


def batch_result(
    reply: Reply, welcome: Welcome, endpoint: str, hedged: bool, hedge_won: bool, attempts: int,
    latency_s: float,
) -> BatchResult:
    """The ``BatchResult`` of a batch ``reply`` (row-major outputs, one column per output)."""
    names = welcome.outputs
    width = max(1, len(names))
    rows = reply.rows or len(reply.outputs) // width
    table = np.asarray(reply.outputs, dtype=np.float64).reshape(rows, width)
    return BatchResult(
        {name: table[:, j] for j, name in enumerate(names)},
        reply.model_version,
        tuple(_rung_name(welcome, r) for r in reply.rungs),
        tuple(Flag(f) for f in reply.flags),
        _status(reply.status),
        dict(zip(TIMING_NAMES, reply.timings_ns, strict=False)),
        endpoint,
        hedged,
        hedge_won,
        attempts,
        latency_s,
    )
