"""``tailguard.bench.loadgen.run`` end to end against stub servers on loopback."""

from __future__ import annotations

from typing import Any

import pytest
from stubservers import StubHttp, StubWire

from tailguard.bench.loadgen import LoadConfig, Target, Workload, run
from tailguard.bench.mix import parse_budgets, parse_mix

MIX = parse_mix("critical=0.5,bulk=0.5", parse_budgets("critical=50ms,bulk=100ms"))


def workload(**kw: Any) -> Workload:
    return Workload(MIX, ["a", "b"], [{"price": 1.0}], entity="item", model="svc", **kw)


def test_open_loop_over_tcp_counts_classes_and_statuses() -> None:
    with StubWire() as srv:
        rep = run(Target("tcp", srv.address), workload(send_budget=True),
                  LoadConfig(rate_hz=1000, duration_s=0.5, connections=2))
    assert rep["mode"] == "open" and rep["target"] == f"tcp://{srv.address}"
    assert rep["sent"] == 500 and rep["replies"] == 500 and rep["aborted"] is None
    crit, bulk = rep["classes"]["critical"], rep["classes"]["bulk"]
    assert crit["ok"] == crit["sent"] > 150 and crit["statuses"] == {"ok": crit["sent"]}
    assert bulk["ok"] == 0 and bulk["shed"] == bulk["sent"]
    assert bulk["statuses"] == {"queue_full": bulk["sent"]}
    assert {r.priority for r in srv.seen} == {"critical", "bulk"}
    assert {r.budget_us for r in srv.seen if r.priority == "critical"} == {50_000}
    assert {r.keys for r in srv.seen} == {"a", "b"}
    assert rep["server_us"]["n"] == rep["replies"] and rep["server_us"]["p50"] == pytest.approx(12, rel=1e-2)


def test_sequential_over_tcp() -> None:
    with StubWire() as srv:
        rep = run(Target("tcp", srv.address), workload(), LoadConfig(requests=300, warmup_requests=20))
    assert rep["mode"] == "sequential" and rep["sent"] == 300 and len(srv.seen) == 320
    assert rep["classes"]["critical"]["latency_us"]["p50"] > 0
    assert {r.budget_us for r in srv.seen} == {0}  # the server's class budget unless asked


def test_busy_poll_sequential_over_tcp() -> None:
    with StubWire() as srv:
        rep = run(Target("tcp", srv.address), workload(), LoadConfig(requests=200, warmup_requests=10,
                                                                     busy_poll=True))
    assert rep["mode"] == "sequential-busy-poll" and rep["sent"] == 200 and rep["replies"] == 200


def test_open_loop_over_http_reads_tailguard_codes() -> None:
    with StubHttp() as srv:
        rep = run(Target("http", srv.address), workload(),
                  LoadConfig(rate_hz=500, duration_s=0.4, connections=4))
    assert rep["replies"] == rep["sent"] == 200
    assert rep["classes"]["bulk"]["statuses"] == {"queue_full": rep["classes"]["bulk"]["sent"]}
    assert rep["classes"]["critical"]["ok"] == rep["classes"]["critical"]["sent"]
    assert {s["path"] for s in srv.seen} == {"/v2/models/svc/infer"}
    assert srv.seen[0]["body"]["inputs"][0]["name"] == "item"


def test_http_needs_the_service_and_entity_names() -> None:
    with pytest.raises(ValueError, match="service name"):
        run(Target("http", "127.0.0.1:1"), Workload(MIX, ["a"], entity="item"), LoadConfig(requests=1))


def test_a_refused_connection_raises() -> None:
    with pytest.raises(OSError):
        run(Target("tcp", "127.0.0.1:1"), workload(), LoadConfig(requests=1))
