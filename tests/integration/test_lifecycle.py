"""Lifecycle against real processes: graceful drain on SIGTERM, worker restarts."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from rawclient import CTX, RawClient

from tailguard.schema.frames import encode_frame
from tailguard.schema.wire import Notice, Reply, Request, Status
from tailguard.serve.process import ServerProcess

ENC = msgspec.msgpack.Encoder()


def test_sigterm_finishes_accepted_requests_then_exits_cleanly(toy_dir: Path) -> None:
    with ServerProcess.start(toy_dir, "--tcp", "127.0.0.1:0") as proc:
        assert proc.tcp is not None
        c = RawClient(proc.tcp)
        n = 400  # under the class queue bound (1024)
        c.send_raw(b"".join(encode_frame(ENC, Request(i, f"k{i}", CTX, priority="bulk"))
                            for i in range(n)))
        proc.terminate()
        replies, notices = [], 0
        while len(replies) < n:
            m = c.recv()
            if isinstance(m, Notice):
                notices += 1
            else:
                replies.append(m)
        assert proc.wait(30) == 0
    assert sorted(r.id for r in replies) == list(range(n))
    # Every accepted request was answered: with a decision, with DRAINING if it arrived after
    # the drain began (the client retries elsewhere), or with EXPIRED if a loaded machine
    # kept it queued past its deadline.  None is lost.
    assert {r.status for r in replies} <= {Status.OK, Status.DRAINING, Status.EXPIRED}
    assert Status.OK in {r.status for r in replies}
    assert notices <= 1


def _wait_for(predicate, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)  # polling another process's state, not racing it


@pytest.mark.parametrize("layout", [[], ["--reuseport"]], ids=["shared-socket", "reuseport"])
def test_a_killed_worker_is_restarted_and_service_continues(toy_dir: Path, layout: list[str]) -> None:
    with ServerProcess.start(toy_dir, "--tcp", "127.0.0.1:0", "--workers", "2", *layout) as proc:
        assert proc.tcp is not None
        before = proc.workers
        assert len(before) == 2
        os.kill(before[0], signal.SIGKILL)
        _wait_for(lambda: before[0] not in proc.refresh().get("workers", []) and
                  len(proc.info["workers"]) == 2)
        assert proc.info["restarts"] >= 1
        for i in range(20):  # new connections land on live workers only
            c = RawClient(proc.tcp)
            r = c.request(i, "a", context=CTX)
            assert isinstance(r, Reply) and r.status == Status.OK
            c.close()


def test_reuseport_workers_share_the_connections(toy_dir: Path) -> None:
    with ServerProcess.start(toy_dir, "--tcp", "127.0.0.1:0", "--workers", "2", "--reuseport") as proc:
        assert proc.tcp is not None
        clients = [RawClient(proc.tcp) for _ in range(40)]
        # The kernel hashes each connection to one worker's queue: 40 all on one has p = 2**-39.
        assert {c.welcome.worker for c in clients} == set(proc.workers)


def test_a_worker_killed_mid_stream_loses_no_idempotent_request(toy_dir: Path) -> None:
    """kill -9 the worker holding the client's connection with requests in flight on it (the
    worker is stopped first, so none can have been answered): the client retries them on a
    new connection (the supervisor keeps the listener; the other worker accepts) and every
    call returns a decision."""
    import asyncio

    from tailguard.client import AsyncClient

    n = 20
    with ServerProcess.start(toy_dir, "--tcp", "127.0.0.1:0", "--workers", "2") as proc:
        assert proc.tcp is not None

        async def main() -> tuple[list[Any], dict[str, Any], int]:
            async with AsyncClient(proc.tcp, pool_size=1, timeout_s=10.0, max_retries=3) as client:
                victim = (await client.welcome()).worker
                os.kill(victim, signal.SIGSTOP)
                calls = [asyncio.ensure_future(client.predict(f"k{i}", CTX, priority="bulk"))
                         for i in range(n)]
                while sum(client.statistics()["in_flight"].values()) < n:  # all sent
                    await asyncio.sleep(0)
                in_flight = sum(client.statistics()["in_flight"].values())
                os.kill(victim, signal.SIGKILL)
                results = await asyncio.gather(*calls)
                return results, client.statistics(), in_flight

        results, stats, in_flight = asyncio.run(asyncio.wait_for(main(), 60))
    assert in_flight == n
    assert len(results) == n and all(r.status == Status.OK for r in results)
    assert stats["retries"] >= n and stats["errors"] == {}, stats
