"""The deployment examples (deploy/systemd, deploy/k8s, docs/deploy.md) use only flags that
``tailguard serve`` accepts, and the Kubernetes manifest has the shape docs/deploy.md says.

Neither systemd nor Kubernetes runs here: the command lines are parsed by the real
``tailguard serve`` argument parser (a misspelt or removed flag fails), and the manifest is
loaded with PyYAML when it is installed.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from tailguard.cli import _parser

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "systemd" / "tailguard@.service"
MANIFEST = ROOT / "deploy" / "k8s" / "tailguard.yaml"
DOC = ROOT / "docs" / "deploy.md"
# What the unit's environment files would hold (docs/deploy.md shows the same).
ENV = {"SERVICE_DIR": "/srv/tailguard/trading", "BIND": "0.0.0.0", "HTTP_PORT": "8471",
       "ONLINE_URL": "redis://10.0.0.20:6379/0", "ROLLOUT_REDIS": "redis://10.0.0.20:6379/0",
       "NATS_URL": "nats://10.0.0.30:4222", "WORKERS": "2"}


def parse_serve(argv: list[str]) -> object:
    """``tailguard <argv>`` through the real parser; argparse's exit becomes a test failure."""
    assert argv[0] == "serve", argv
    try:
        return _parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed which flag it refused
        pytest.fail(f"tailguard {' '.join(argv)} is refused by the parser (exit {exc.code})")


def unit_command() -> list[str]:
    lines = UNIT.read_text().splitlines()
    (exec_start,) = [ln.split("=", 1)[1] for ln in lines if ln.startswith("ExecStart=")]
    used = set(re.findall(r"\$\{(\w+)\}", exec_start))
    assert used <= set(ENV), f"the unit uses variables the docs do not set: {used - set(ENV)}"
    line = re.sub(r"\$\{(\w+)\}", lambda m: ENV[m.group(1)], exec_start).replace("%i", "7471")
    argv = shlex.split(line)
    assert argv[0].endswith("/tailguard"), argv[0]
    return argv[1:]


def manifest_args() -> list[str]:
    """The container's args: a JSON-compatible flow sequence, readable without PyYAML."""
    m = re.search(r"^\s*args:\s*(\[.*?\])", MANIFEST.read_text(), re.S | re.M)
    assert m is not None, "no args: [...] in the manifest"
    args: list[str] = json.loads(m.group(1))
    return args


def test_the_systemd_unit_runs_a_serve_command_the_parser_accepts() -> None:
    args = parse_serve(unit_command())
    assert vars(args)["tcp"] == "0.0.0.0:7471" and vars(args)["http"] == "0.0.0.0:8471"
    assert vars(args)["nats"] == ENV["NATS_URL"] and vars(args)["online_url"] == ENV["ONLINE_URL"]


def test_the_systemd_unit_stops_by_draining_within_its_stop_timeout() -> None:
    text = UNIT.read_text()
    assert "KillSignal=SIGTERM" in text
    drain = vars(parse_serve(unit_command()))["drain_timeout"]
    (stop,) = re.findall(r"^TimeoutStopSec=(\d+)$", text, re.M)
    assert int(stop) > drain


def test_the_manifest_args_are_accepted_by_the_parser() -> None:
    args = vars(parse_serve(manifest_args()))
    assert args["http"] and args["tcp"] and args["nats"] and args["online_url"]


def test_every_serve_command_in_the_deploy_doc_is_accepted() -> None:
    text = DOC.read_text()
    commands = re.findall(r"^tailguard (serve .*?)(?<!\\)$", text.replace("\\\n", " "), re.M)
    assert commands, "docs/deploy.md shows no tailguard serve command"
    for cmd in commands:
        parse_serve(shlex.split(cmd))


def test_the_manifest_is_a_deployment_of_n_replicas_with_probes_and_services() -> None:
    yaml = pytest.importorskip("yaml")
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds.count("Deployment") == 1 and kinds.count("Service") == 2
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    assert dep["spec"]["replicas"] >= 2
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = vars(parse_serve(container["args"]))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args["http"].endswith(f":{ports['http']}") and args["tcp"].endswith(f":{ports['binary']}")
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert pod["terminationGracePeriodSeconds"] > args["drain_timeout"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    for svc in (d for d in docs if d["kind"] == "Service"):
        assert svc["spec"]["selector"] == labels
