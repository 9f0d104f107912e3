"""``tailguard serve --rollout-redis``: server workers follow the rollout goal in a real Redis.

A real redis-server, a real two-worker server process and the ``tailguard rollout`` CLI: a
canary declared on the command line reaches both workers (the candidate loaded on a worker
thread and warmed up in the loop's side-path slices), sends a sticky share of entity keys to
version 2 and the rest to version 1; a rollback brings every key back to version 1, a new
rollout promoted by hand moves every key to version 2 — each within seconds, without
restarting the server.  ``/metrics`` exports the rollout and ``/dashboard/data`` shows it.
A corrupted candidate is refused by the workers (the reason shown), which keep serving version 1.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from services import RedisServer, running_redis
from toyservice import CTX

from tailguard.cli import main
from tailguard.client import Client
from tailguard.serve.process import ServerProcess

KEYS = [f"user{i}" for i in range(200)]
WAIT_S = 30.0  # convergence is normally well under a second; this is a busy-CI ceiling


def wait_for(done: Callable[[], bool], what: str, served: ServerProcess) -> None:
    """Poll a condition another process makes true (a convergence wait, not a race fix)."""
    deadline = time.monotonic() + WAIT_S
    while not done():
        assert time.monotonic() < deadline, (f"not reached within {WAIT_S} s: {what}; dashboard: "
                                             f"{dashboard(served)}; log: {served.log()}")
        time.sleep(0.05)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path) as server:
        yield server


def pin_version_1(service_dir: Path) -> None:
    """Pin primary/1 in the spec (as a deployment does), so version 2 on disk stays inactive."""
    spec = service_dir / "service.toml"
    text = spec.read_text()
    head = 'name = "primary"\nrepository = "models"\n'
    assert head in text
    spec.write_text(text.replace(head, head + 'version_policy = "pinned"\nversion = "1"\n'))


@pytest.fixture
def served(toy_copy: Path, staged_v2: Path, redis_server: RedisServer) -> Iterator[ServerProcess]:
    pin_version_1(toy_copy)
    with ServerProcess.start(toy_copy, "--tcp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--workers", "2",
                             "--rollout-redis", redis_server.url) as proc:
        # Deployed after the server loaded version 1: present on disk, not active (flag off).
        shutil.copytree(staged_v2, toy_copy / "models" / "primary" / "2")
        yield proc


def versions(clients: list[Client]) -> list[dict[str, str]]:
    """Per client (each its own connection, so its own worker), the version that answered each key."""
    return [{k: c.predict(k, CTX, priority="bulk").model_version.rpartition("/")[2] for k in KEYS}
            for c in clients]


def dashboard(served: ServerProcess) -> Any:
    """The rollout summary in the dashboard's header (``None`` without one)."""
    data = json.loads(urllib.request.urlopen(f"http://{served.http}/dashboard/data", timeout=10).read())
    return data["info"]["rollout"]


def cli(toy_copy: Path, redis_server: RedisServer, *args: str) -> int:
    return main(["rollout", args[0], str(toy_copy), "--redis", redis_server.url, *args[1:]])


def test_server_workers_follow_canary_rollback_and_promotion(served: ServerProcess, toy_copy: Path,
                                                            redis_server: RedisServer) -> None:
    assert served.tcp is not None and served.http is not None
    clients = [Client([served.tcp]) for _ in range(4)]
    try:
        assert all(set(v.values()) == {"1"} for v in versions(clients))
        assert cli(toy_copy, redis_server, "canary", "--model", "primary", "--version", "2", "--share", "0.3",
                   "--min-samples", "1000000000", "--max-error-rate", "0.5", "--by", "test") == 0

        def split() -> bool:
            seen = versions(clients)
            return all(v == seen[0] for v in seen) and set(seen[0].values()) == {"1", "2"}

        wait_for(split, "every worker routes a share of keys to version 2", served)
        first = versions(clients)[0]
        share = sum(v == "2" for v in first.values()) / len(first)
        assert 0.15 < share < 0.45, share
        assert versions(clients)[0] == first  # sticky: a key keeps its version


        def exports_canary() -> bool:  # one worker's /metrics, judged whole
            lines = urllib.request.urlopen(f"http://{served.http}/metrics", timeout=10).read().decode()
            phase = [ln for ln in lines.splitlines() if ln.startswith("tailguard_rollout_phase{")]
            routed = [ln for ln in lines.splitlines()
                      if ln.startswith("tailguard_rollout_decisions_total{") and 'version="candidate"' in ln]
            return (len(phase) == 1 and 'candidate="2"' in phase[0] and phase[0].endswith(" 1.0")
                    and len(routed) == 1 and float(routed[0].rsplit(" ", 1)[1]) > 0)

        wait_for(exports_canary, "/metrics exports the canary", served)

        def shows_canary() -> bool:  # each worker has its own dashboard: judge one reply whole
            r = dashboard(served) or {}
            return (r.get("phase"), r.get("stage_kind"), r.get("candidate"), r.get("share")) == (
                "active", "canary", "2", 0.3)

        wait_for(shows_canary, "the dashboard shows the canary", served)

        assert cli(toy_copy, redis_server, "rollback", "--reason", "numbers look off") == 0
        wait_for(lambda: all(set(v.values()) == {"1"} for v in versions(clients)),
                 "rolled back everywhere", served)
        wait_for(lambda: "numbers look off" in json.dumps(dashboard(served)),
                 "the dashboard shows why", served)

        assert cli(toy_copy, redis_server, "canary", "--model", "primary", "--version", "2", "--share", "0.1",
                   "--min-samples", "1000000000", "--max-error-rate", "0.5", "--replace") == 0
        wait_for(lambda: all("2" in v.values() for v in versions(clients)),
                 "second canary everywhere", served)
        assert cli(toy_copy, redis_server, "promote") == 0
        wait_for(lambda: all(set(v.values()) == {"2"} for v in versions(clients)),
                 "promoted everywhere", served)
    finally:
        for c in clients:
            c.close()


def test_corrupted_candidate_is_refused_by_the_workers(toy_copy: Path, staged_v2: Path,
                                                       redis_server: RedisServer, tmp_path: Path) -> None:
    pin_version_1(toy_copy)
    with ServerProcess.start(toy_copy, "--tcp", "127.0.0.1:0", "--http", "127.0.0.1:0",
                             "--rollout-redis", redis_server.url) as served:
        assert served.tcp is not None and served.http is not None
        target = toy_copy / "models" / "primary" / "2"
        shutil.copytree(staged_v2, target)
        artifact = max((p for p in target.iterdir() if p.is_file() and p.name != "manifest.json"),
                       key=lambda p: p.stat().st_size)
        artifact.write_bytes(artifact.read_bytes()[:-16] + b"\0" * 16)
        assert cli(toy_copy, redis_server, "canary", "--model", "primary", "--version", "2", "--share", "0.5",
                   "--min-samples", "1000000000", "--max-error-rate", "0.5") == 0

        def refused() -> str:
            return str((dashboard(served) or {}).get("last_error") or "")

        wait_for(lambda: bool(refused()), "the worker records the refusal", served)
        assert "model_load_error" in refused() or "hash" in refused()
        with Client([served.tcp]) as client:
            assert {client.predict(k, CTX, priority="bulk").model_version for k in KEYS[:50]} == {"primary/1"}
