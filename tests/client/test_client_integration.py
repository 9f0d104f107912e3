"""Both clients against real ``tailguard serve`` processes running the toy service: answers,
error mapping, failover when a server is killed and when one drains (SIGTERM)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tailguard.client import AsyncClient, Balance, Client, InvalidRequest
from tailguard.schema.wire import Status

process = pytest.importorskip("tailguard.serve.process")
ServerProcess = process.ServerProcess

CTX = {"price": 104.5, "size": 3.0}


@pytest.fixture(scope="module")
def server(toy_dir: Path) -> Iterator[ServerProcess]:
    """One server shared by the read-only tests, on TCP and a Unix socket."""
    d = Path(tempfile.mkdtemp(prefix="tgc"))  # short: Unix socket paths are limited to 108 bytes
    with ServerProcess.start(toy_dir, "--tcp", "127.0.0.1:0", "--unix", str(d / "s")) as sp:
        yield sp
    shutil.rmtree(d, ignore_errors=True)


def test_sync_predict_and_batch(server: ServerProcess) -> None:
    with Client(server.tcp) as c:
        w = c.welcome()
        assert (w.service, w.outputs, w.context) == ("toy", ["p"], ["price", "size"])
        r = c.predict("a", CTX, priority="normal", budget_us=50_000)
        assert set(r.outputs) == {"p"} and r.status is Status.OK
        assert r.rung in w.rungs and r.model_version
        assert set(r.timings_ns) >= {"queue", "inference", "server_total"}
        b = c.predict_batch(["a", "b", "c"], {"price": [1.0, 2.0, 3.0], "size": [1.0, 1.0, 2.0]})
        assert len(b) == 3 and b.outputs["p"].shape == (3,)


def test_sync_unix_socket(server: ServerProcess) -> None:
    with Client(f"unix://{server.unix}") as c:
        assert c.predict("a", CTX).endpoint == f"unix://{server.unix}"


def test_real_errors_map_to_invalid_request(server: ServerProcess) -> None:
    with Client(server.tcp) as c:
        with pytest.raises(InvalidRequest) as info:
            c.predict("a", CTX, priority="nope")
        assert (info.value.code, info.value.field) == ("unknown_priority", "priority")
        with pytest.raises(InvalidRequest) as info:
            c.predict("a", {"price": 1.0})
        assert info.value.field.startswith("context")
        assert c.statistics()["retries"] == 0


def test_async_pipelined_calls(server: ServerProcess) -> None:
    async def main() -> None:
        async with AsyncClient(server.tcp) as c:
            calls = (c.predict(f"k{i}", {"price": float(i), "size": 1.0}) for i in range(100))
            rs = await asyncio.gather(*calls)
            assert len({r.outputs["p"] for r in rs}) > 1  # different inputs, matched to their calls
            assert c.statistics()["connections_opened"] == 1

    asyncio.run(asyncio.wait_for(main(), 30))


def test_failover_when_a_server_is_killed(toy_dir: Path) -> None:
    with ServerProcess.start(toy_dir, "--tcp", "127.0.0.1:0") as a, \
         ServerProcess.start(toy_dir, "--tcp", "127.0.0.1:0") as b, \
         Client([a.tcp, b.tcp], balance=Balance.IN_ORDER, health_interval_s=0) as c:
        assert c.predict("a", CTX).endpoint == f"tcp://{a.tcp}"
        a.kill()
        a.wait(10)
        for _ in range(5):
            assert c.predict("a", CTX).endpoint == f"tcp://{b.tcp}"
        stats = c.statistics()
        assert stats["errors"] == {} and stats["endpoints"][f"tcp://{a.tcp}"] == "down"


def test_draining_server_moves_traffic(toy_dir: Path) -> None:
    with ServerProcess.start(toy_dir, "--tcp", "127.0.0.1:0") as a, \
         ServerProcess.start(toy_dir, "--tcp", "127.0.0.1:0") as b, \
         Client([a.tcp, b.tcp], balance=Balance.IN_ORDER, health_interval_s=0) as c:
        assert c.predict("a", CTX).endpoint == f"tcp://{a.tcp}"
        a.terminate()  # drains: notices its connections, answers new requests DRAINING, exits
        assert a.wait(30) == 0
        for _ in range(5):
            assert c.predict("a", CTX, idempotent=False).endpoint == f"tcp://{b.tcp}"
        stats = c.statistics()
        assert stats["errors"] == {}
        assert stats["endpoints"][f"tcp://{a.tcp}"] in ("draining", "down")


def test_the_async_client_runs_on_uvloop(server: ServerProcess) -> None:
    uvloop = pytest.importorskip("uvloop")  # the serve extra; uvloop's transports are no asyncio.Transport

    async def main() -> list[float]:
        async with AsyncClient(server.tcp) as c:
            rs = await asyncio.gather(*(c.predict(f"k{i}", {"price": float(i), "size": 1.0}, priority="bulk")
                                        for i in range(20)))
            return [r.outputs["p"] for r in rs]

    assert len(set(uvloop.run(asyncio.wait_for(main(), 30)))) > 1
