"""Shared pieces of the gaming and recsys example tests: a copy of the example with tiny
trained models, its script modules, the copy loaded and fed, and its ``run.py`` (the report,
and the ``--json`` command line)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tailguard import load_service
from tailguard.features.transforms import load_module
from tailguard.service import Service

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
IGNORE = shutil.ignore_patterns("models", "reference", "__pycache__")


def trained_copy(tmp_path_factory: pytest.TempPathFactory, example: str,
                 **train_kwargs: Any) -> tuple[Path, dict[str, Any]]:
    """A copy of ``examples/<example>`` (without its models and reference) with tiny models
    trained into it (ONNX only, no C compile): the directory and the training metrics."""
    d = Path(shutil.copytree(EXAMPLES / example, tmp_path_factory.mktemp(example) / "svc", ignore=IGNORE))
    train = load_module(str(d), "train")
    metrics = train.train(d, compile_trees=False, log=lambda *_: None, **train_kwargs)
    return d, metrics


def example_modules(directory: Path) -> tuple[Any, Any, Any]:
    """The copy's ``events``, ``train`` and ``run`` modules."""
    return tuple(load_module(str(directory), m) for m in ("events", "train", "run"))  # type: ignore[return-value]


def replayed(directory: Path, modules: tuple[Any, Any, Any], n: int,
             before: Callable[[Service, Any], object] | None = None) -> tuple[Service, Any]:
    """The copy loaded and fed ``n`` generated units (matches, sessions) of events (seed 5) of
    the training world, after ``before(service, world)`` when given; the service and the world."""
    events, train, _ = modules
    svc = load_service(directory, freeze_gc=False)
    world = events.make_world(seed=train.WORLD_SEED)
    if before is not None:
        before(svc, world)
    for ev in events.generate(world, n, seed=5).events():
        svc.stream.process(ev)
    return svc, world


def run_report(run: Any, directory: Path, **kwargs: Any) -> dict[str, Any]:
    """``run.run(directory, **kwargs)`` quietly, checking what every example's report holds:
    nothing retrained (the models were up to date) and the latency of every stage."""
    report: dict[str, Any] = run.run(directory, log=lambda *_: None, freeze_gc=False, **kwargs)
    assert report["train"] == {}  # the models were up to date: nothing retrained
    assert set(report["latency_us"]) == {"ingest", "features", "inference", "delivery", "total"}
    return report


def run_json(run: Any, directory: Path, argv: list[str],
             capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """Call the copy's ``run.main(["--json", *argv])`` and parse the last line it printed."""
    assert directory.resolve() == run.HERE  # the copy's run.py serves the copy
    run.main(["--json", *argv])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    report: dict[str, Any] = json.loads(last)
    return report
