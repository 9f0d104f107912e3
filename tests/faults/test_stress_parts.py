"""The stress suite's parts without servers: figures, recovery, the proxy, the chaos runtime,
the report and the command's arguments."""

from __future__ import annotations

import argparse
import json
import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tailguard.decision import Flag
from tailguard.stress.chaos import ChaosRuntime, ChaosSwitch, write_control
from tailguard.stress.commands import register_stress
from tailguard.stress.load import Outcomes
from tailguard.stress.measure import recovery, window_figures
from tailguard.stress.problems import InjectedFault
from tailguard.stress.proxy import DelayProxy
from tailguard.stress.report import summary, write_report
from tailguard.stress.soak import trend

MS = 1_000_000


def outcomes(n: int, *, period_ms: int = 10, latency_ms: int = 2) -> Outcomes:
    """``n`` requests every ``period_ms``, all answered OK after ``latency_ms``."""
    out = Outcomes(n)
    out.intended[:] = np.arange(n) * period_ms * MS
    out.done[:] = out.intended + latency_ms * MS
    out.ok[:] = True
    out.answered[:] = True
    out.attempts[:] = 1
    return out


def test_window_figures_count_lost_shed_and_late() -> None:
    out = outcomes(100)
    out.ok[:3] = False
    out.error[:2] = out.code_index("predicted_late")
    out.error[2] = out.code_index("connection_lost")
    out.done[10:15] += 50 * MS  # 52 ms: past a 20 ms budget plus 5 ms slack
    out.degraded[20:30] = True
    out.flags[20:30] = int(Flag.FALLBACK)
    f = window_figures(out, np.ones(100, dtype=bool), np.array([20 * MS]), 5 * MS)
    assert (f["sent"], f["ok"], f["lost"], f["shed"], f["late"], f["degraded"]) == (100, 97, 3, 2, 5, 10)
    assert f["errors"] == {"predicted_late": 2, "connection_lost": 1}
    assert f["flags"] == {"fallback": 10}
    assert f["p50_ms"] == 2.0 and f["max_ms"] == 52.0


def test_recovery_is_the_start_of_the_first_stable_calm_run() -> None:
    out = outcomes(600)  # 6 s, 100 requests/s
    calm = out.intended < 2000 * MS
    # Fault from 2 s to 3 s: errors; then 300 ms of slow answers before calm returns.
    fault = (out.intended >= 2000 * MS) & (out.intended < 3000 * MS)
    out.ok[fault] = False
    slow = (out.intended >= 3000 * MS) & (out.intended < 3300 * MS)
    out.done[slow] += 40 * MS
    assert recovery(out, calm, 3000 * MS, 6000 * MS, bin_s=0.1, stable_s=0.5) == pytest.approx(0.3)


def test_recovery_is_zero_when_service_never_left_calm_and_none_when_it_never_returns() -> None:
    out = outcomes(600)
    calm = out.intended < 2000 * MS
    assert recovery(out, calm, 3000 * MS, 6000 * MS) == 0.0
    out.degraded[out.intended >= 2000 * MS] = True
    assert recovery(out, calm, 3000 * MS, 6000 * MS) is None


def test_a_calm_run_interrupted_by_a_bad_bin_starts_again() -> None:
    out = outcomes(600)
    calm = out.intended < 2000 * MS
    bad = (out.intended >= 3300 * MS) & (out.intended < 3400 * MS)
    out.ok[bad] = False
    # 3.0-3.3 calm (too short for 0.5 s), 3.3-3.4 bad, calm again from 3.4 s.
    assert recovery(out, calm, 3000 * MS, 6000 * MS, bin_s=0.1, stable_s=0.5) == pytest.approx(0.4)


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t


def test_proxy_forwards_in_order_and_delays_only_while_asked() -> None:
    srv, _ = _echo_server()
    proxy = DelayProxy(srv.getsockname())
    proxy.start()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as c:
            c.sendall(b"one")
            assert c.recv(16) == b"one"
            assert proxy.bytes_delayed == 0
            proxy.delay_s = 0.02
            for word in (b"two", b"three"):
                c.sendall(word)
                got = b""
                while len(got) < len(word):
                    got += c.recv(16)
                assert got == word
            assert proxy.bytes_delayed == len(b"twothree")
        assert proxy.connections == 1
    finally:
        proxy.close()
        srv.close()


class _Inner:
    kind, n_inputs, n_outputs = "test", 2, 1

    def __init__(self) -> None:
        self.calls = 0

    def run(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        return x[:, :1] * 2.0

    def clone(self) -> _Inner:
        return _Inner()


def test_chaos_runtime_follows_its_control_file_and_clones_share_the_switch(tmp_path: Path) -> None:
    control = tmp_path / "chaos.json"
    switch = ChaosSwitch()
    rt = ChaosRuntime(_Inner(), switch)
    twin = rt.clone()
    x = np.ones((3, 2), dtype=np.float32)
    assert rt.run(x).tolist() == [[2.0]] * 3
    write_control(control, "raise")
    switch.load(control)
    for r in (rt, twin):
        with pytest.raises(InjectedFault):
            r.run(x)
    write_control(control, "slow", factor=2.0, floor_ms=0.01)
    switch.load(control)
    assert (switch.factor, switch.floor_ns) == (2.0, 10_000)
    assert twin.run(x).tolist() == [[2.0]] * 3
    control.write_text("not json")
    switch.load(control)
    assert rt.run(x).tolist() == [[2.0]] * 3  # a bad file switches the fault off
    with pytest.raises(ValueError, match="chaos mode"):
        write_control(control, "explode")


def test_trend_is_the_least_squares_slope() -> None:
    assert trend([1.0, 2.0]) is None
    assert trend([10.0, 12.0, 14.0, 16.0]) == pytest.approx(2.0)
    assert trend([5.0, 5.0, 5.0]) == pytest.approx(0.0)


def _result(name: str, lost: int) -> dict[str, Any]:
    window = {"sent": 10, "ok": 10 - lost, "lost": lost, "shed": 0, "late": 0, "degraded": 0, "retried": 0,
              "errors": {"timeout": lost} if lost else {}, "p50_ms": 1.0, "p99_ms": 2.0, "p999_ms": 3.0,
              "max_ms": 3.0, "server_p99_ms": 0.5, "classes": {}, "flags": {}}
    return {"scenario": name, "description": "a test", "lost": lost, "late": 0, "sent": 30, "shed": 0,
            "degraded": 0, "recovery_s": 0.1, "p99_ms_before": 2.0, "p99_ms_during": 2.0, "p99_ms_after": 2.0,
            "p999_ms_before": 3.0, "p999_ms_during": 3.0, "p999_ms_after": 3.0,
            "windows": {w: window for w in ("before", "during", "after")},
            "resources": {w: {"rss_mb_max": 50.0, "fds_max": 20} for w in ("before", "during", "after")},
            "fault": {"start_s": 1.0, "end_s": 2.0}, "checks": {"no_lost_requests": lost == 0},
            "passed": lost == 0}


def test_report_writes_markdown_and_json_with_the_issue_keys(tmp_path: Path) -> None:
    results = [_result("worker-kill", 0), _result("redis-restart", 2),
               {"scenario": "nats-restart", "error": "StressError: nats-server not found"}]
    md, js = write_report(results, tmp_path / "r", {"command": "tailguard stress all", "when": "now"})
    doc = json.loads(js.read_text())
    s = doc["summary"]
    for key in ("lost", "late", "p99_ms_before", "p99_ms_during", "p99_ms_after", "recovery_s"):
        assert key in s["worker-kill"]
    assert s["redis-restart"]["failed"] == ["no_lost_requests"] and not s["redis-restart"]["passed"]
    assert s["nats-restart"] == {"error": "StressError: nats-server not found", "passed": False}
    text = md.read_text()
    assert "| worker-kill | 30 | 0 |" in text and "FAIL: no_lost_requests" in text
    assert summary(results) == s


def test_register_stress_adds_the_command_and_its_options() -> None:
    ap = argparse.ArgumentParser()
    register_stress(ap.add_subparsers(dest="command"))
    args = ap.parse_args(["stress", "worker-kill", "--seconds", "5", "--rate", "100", "--json", "--out", "x"])
    got = (args.scenario, args.seconds, args.rate, args.json, args.out)
    assert got == ("worker-kill", 5.0, 100.0, True, Path("x"))
    assert ap.parse_args(["stress", "soak", "--minutes", "3"]).minutes == 3.0
    assert ap.parse_args(["stress", "all"]).scenario == "all"
    with pytest.raises(SystemExit):
        ap.parse_args(["stress", "no-such-scenario"])


def test_outcomes_code_index_is_stable() -> None:
    out = Outcomes(3)
    assert [out.code_index(c) for c in ("timeout", "expired", "timeout")] == [1, 2, 1]
    out.error[:] = [0, 1, 2]
    assert out.error_counts() == {"timeout": 1, "expired": 1}


def test_budgets_replace_the_named_classes_budgets_in_a_service_copy(tmp_path: Path) -> None:
    from tailguard.spec import load_spec
    from tailguard.stress.problems import StressError
    from tailguard.stress.target import Target, service_copy

    src = Path(__file__).resolve().parents[2] / "examples" / "trading"
    target = Target(src, ["AAPL"], None, "instrument")
    before = {p.name: float(p.budget) for p in load_spec(src).priorities}
    copy = service_copy(target, tmp_path / "svc", online=False, budgets="critical=10ms, bulk=150ms")
    after = {p.name: float(p.budget) for p in load_spec(copy).priorities}
    assert after == {**before, "critical": 0.010, "bulk": 0.150}
    with pytest.raises(StressError, match="does not declare"):
        service_copy(target, tmp_path / "svc2", online=False, budgets="urgent=1ms")
    with pytest.raises(StressError, match="name=duration"):
        service_copy(target, tmp_path / "svc3", online=False, budgets="critical")
    with pytest.raises(StressError, match="--budgets"):
        service_copy(target, tmp_path / "svc4", online=False, budgets="critical=soon")


def test_the_measured_client_hedges_only_when_asked() -> None:
    from tailguard.stress.runner import StressConfig, measured_client

    plain = measured_client(StressConfig(), ["127.0.0.1:9"])
    hedged = measured_client(StressConfig(hedge=True), ["127.0.0.1:9", "127.0.0.1:10"], workers=2)
    assert plain._core.hedge is None and hedged._core.hedge is not None
    assert hedged._core.hedge.quantile == 0.95 and hedged._core.hedge.max_fraction == 0.1
