"""One /metrics for all workers: the supervisor scrapes each worker over its private socket."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from rawclient import CTX

from tailguard.serve.aggregate import merge_expositions
from tailguard.serve.process import ServerProcess


def scrape(address: str) -> dict[str, object]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
        return {f.name: f for f in text_string_to_metric_families(resp.read().decode())}


def test_the_supervisor_serves_every_workers_series(toy_dir: Path) -> None:
    from tailguard.client import Client

    with ServerProcess.start(toy_dir, "--tcp", "127.0.0.1:0", "--workers", "2",
                             "--metrics", "127.0.0.1:0") as proc:
        assert proc.tcp is not None
        with Client(proc.tcp, pool_size=4, timeout_s=10.0) as client:
            for i in range(40):
                client.predict(f"k{i}", CTX)
        fams = scrape(proc.info["metrics"])
        workers = {s.labels["worker"] for s in fams["tailguard_info"].samples}  # type: ignore[attr-defined]
        assert workers == {str(p) for p in proc.workers}
        state = {s.labels["state"]: s.value for s in fams["tailguard_workers"].samples}  # type: ignore[attr-defined]
        assert state == {"expected": 2, "answered": 2}
        answered = sum(s.value for s in fams["tailguard_answered"].samples)  # type: ignore[attr-defined]
        assert answered == 40  # counted once each, whichever worker served it


def test_merging_keeps_one_family_with_every_sample() -> None:
    a = "# HELP x_total things\n# TYPE x_total counter\nx_total{worker=\"1\"} 3.0\n"
    b = "# HELP x_total things\n# TYPE x_total counter\nx_total{worker=\"2\"} 4.0\n"
    (fam,) = merge_expositions([a, b])
    assert fam.name == "x" and fam.type == "counter"
    assert [(s.labels["worker"], s.value) for s in fam.samples] == [("1", 3.0), ("2", 4.0)]
