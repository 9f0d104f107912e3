"""``CandidateLoader``: a rollout's candidate loaded on a worker thread, warmed up step by step
within the owner's slices, refusals raised once on the owner thread."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from rolloutkit import canary_plan

from tailguard import Service
from tailguard.errors import ModelLoadError
from tailguard.rollout.loading import CandidateLoader


def ready_to_warm(loader: CandidateLoader) -> None:
    """Wait for the worker thread's load (a thread join in effect, not a race fix)."""
    assert loader._done.wait(30.0)


def test_load_off_thread_then_one_warm_step_per_tight_slice(svc: Service) -> None:
    loader = CandidateLoader(svc, warmup=2)
    plan = canary_plan(0.1)
    assert loader.get(plan, end_ns=0) is None  # the load starts on a worker thread
    assert loader.loading == ("primary", "2")
    ready_to_warm(loader)
    steps = []
    while (model := loader.get(plan, end_ns=0)) is None:  # a slice already over: one step per call
        steps.append(loader.warm_steps)
    assert steps == list(range(1, len(steps) + 1))
    assert loader.warm_steps == 2 * 3  # warmup=2 per batch size 1, 8 and 64
    assert (model.name, model.version) == ("primary", "2")
    assert loader.loading is None and loader.loads == 1


def test_an_ample_slice_finishes_the_warm_up_in_one_call(svc: Service) -> None:
    loader = CandidateLoader(svc, warmup=2)
    plan = canary_plan(0.1)
    assert loader.get(plan) is None
    ready_to_warm(loader)
    model = loader.get(plan, end_ns=time.perf_counter_ns() + 10**10)
    assert model is not None and loader.warm_steps == 6


def test_a_refused_candidate_raises_once_on_the_owner_thread(svc: Service) -> None:
    target = Path(svc.directory) / "models" / "primary" / "2"
    artifact = max((p for p in target.iterdir() if p.is_file() and p.name != "manifest.json"),
                   key=lambda p: p.stat().st_size)
    artifact.write_bytes(artifact.read_bytes()[:-16] + b"\0" * 16)
    loader = CandidateLoader(svc, warmup=2)
    plan = canary_plan(0.1)
    assert loader.get(plan) is None
    ready_to_warm(loader)
    with pytest.raises(ModelLoadError):
        loader.get(plan)
    assert loader.loading is None
    assert loader.get(plan) is None and loader.loads == 2  # asked again: a new attempt
