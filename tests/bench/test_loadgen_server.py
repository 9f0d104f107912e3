"""The load generator against a real ``tailguard serve`` (the toy service) on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tailguard.bench.compare import max_rate
from tailguard.bench.loadgen import LoadConfig, Target, Workload, run
from tailguard.bench.mix import parse_budgets, parse_mix
from tailguard.serve.process import ServerProcess

CTX = {"price": 104.5, "size": 3.0}
# Generous budgets, sent with each request (the toy service's own are in-process budgets, 500 µs
# critical, which a busy CI box misses over loopback now and then): this checks the generator's
# accounting against a real server, not the server's speed.
MIX = parse_mix("critical=0.2,normal=0.3,bulk=0.5", parse_budgets("critical=1s,normal=1s,bulk=1s"))


@pytest.fixture(scope="module")
def server(toy_dir: Path) -> Iterator[ServerProcess]:
    with ServerProcess.start(toy_dir, "--tcp", "127.0.0.1:0", "--http", "127.0.0.1:0") as proc:
        yield proc


def workload() -> Workload:
    return Workload(MIX, [f"i{k}" for k in range(8)], [CTX], entity="item", model="toy", send_budget=True)


def test_open_loop_over_tcp_gets_every_class_answered(server: ServerProcess) -> None:
    assert server.tcp is not None
    rep = run(Target("tcp", server.tcp), workload(), LoadConfig(rate_hz=400, duration_s=0.5, connections=2))
    assert rep["sent"] == 200 and rep["replies"] == 200 and rep["ok"] == 200, rep["statuses"]
    assert set(rep["classes"]) == {"critical", "normal", "bulk"}
    assert all(c["sent"] > 0 and c["ok"] == c["sent"] for c in rep["classes"].values())
    assert rep["server_us"]["n"] == 200  # the server reports its own time per reply


def test_sequential_over_http(server: ServerProcess) -> None:
    assert server.http is not None
    rep = run(Target("http", server.http), workload(), LoadConfig(requests=100, warmup_requests=10))
    assert rep["ok"] == 100, rep["statuses"]


def test_budgets_sent_in_requests_are_honoured(server: ServerProcess) -> None:
    """A 1 us budget cannot be met: the server sheds every request, and the report says so."""
    assert server.tcp is not None
    mix = parse_mix("critical", parse_budgets("critical=1us"))
    w = Workload(mix, ["i1"], [CTX], send_budget=True)
    rep = run(Target("tcp", server.tcp), w, LoadConfig(requests=50, warmup_requests=0))
    assert rep["replies"] == 50 and rep["ok"] == 0 and rep["shed"] == 50, rep["statuses"]


def test_a_max_rate_search_finds_a_passing_rate(server: ServerProcess) -> None:
    assert server.tcp is not None
    res = max_rate(Target("tcp", server.tcp), workload(), start=100, ceiling=200, bisect=0, duration_s=0.3,
                   warmup_s=0.0, connections=2, p99_limit_us=1e6)
    assert res["max_rps"] == 200 and res["first_fail_rps"] is None
    assert [s["rate"] for s in res["steps"]] == [100, 200]
