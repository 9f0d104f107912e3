"""``worker-crash``: one worker of a ``--workers 2`` replica SIGKILLed under load, replaced by
the supervisor while the surviving worker keeps the shared listener accepting.

Bounds (issue 7): no idempotent request lost (in-flight requests on the killed worker's
connections are retried by the client on a new connection, within their loopback-sized
budgets: see conftest), every killed worker restarted by the supervisor, each kill's probe
connection accepted and answered by the survivor, recovery within 2 s.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stresskit import explain, run

from tailguard.stress.commands import register_stress
from tailguard.stress.report import summary
from tailguard.stress.scenarios import SCENARIOS
from tailguard.stress.target import Target
from tailguard.stress.workercrash import WorkerCrash


def test_worker_crash_loses_nothing_restarts_every_worker_and_recovers(
        stress_target: Target, tmp_path: Path) -> None:
    # 9 s at 200/s; the fault from 2.7 s to 6.3 s (after the 1.5 s warm-up), a kill every
    # 1.5 s once the previous replacement serves: at least two kills on a busy machine.  A
    # request in flight on the killed worker is retried once its connection resets, and a
    # SIGKILLed process's sockets reset only after the kernel has torn down its memory: on a
    # 2-core box busy with the rest of the suite that took more than the 20 ms critical
    # budget now and then (1 lost in 4 runs).  Budgets of 60 ms leave room for that; the
    # claim is that nothing is lost when the budget allows the retry.
    res = run("worker-crash", stress_target, tmp_path, seconds=9.0, crash_every_s=1.5,
              budgets="critical=60ms,normal=60ms,bulk=200ms")
    f = res["fault"]
    assert f["kills"] >= 2, f
    assert f["worker_restarts"] == f["kills"] and f["workers_serving"] == 2, f
    assert f["supervisor_alive"], f
    assert len(f["restart_s"]) == f["kills"] and all(0 < s < 30 for s in f["restart_s"]), f
    assert res["checks"]["survivor_accepted"], f["probes"]
    assert res["windows"]["during"]["sent"] > 0 and res["windows"]["before"]["sent"] > 0
    assert res["lost"] == 0, explain(res)
    assert res["checks"]["recovered_within_2s"], explain(res)
    assert res["passed"], explain(res)
    s = summary([res])["worker-crash"]
    assert s["worker_restarts"] == f["kills"] and s["restart_s_max"] == max(f["restart_s"])
    assert {"lost", "late", "p99_ms_before", "p99_ms_during", "p99_ms_after", "recovery_s"} <= set(s)


def test_worker_crash_is_registered_with_the_command() -> None:
    assert isinstance(SCENARIOS["worker-crash"](), WorkerCrash)
    ap = argparse.ArgumentParser()
    register_stress(ap.add_subparsers())
    args = ap.parse_args(["stress", "worker-crash", "--crash-every", "2", "--json"])
    assert (args.scenario, args.crash_every) == ("worker-crash", 2.0)
    assert WorkerCrash.workers == 2
