"""Scheduler configuration: validated once, classes ordered by level."""

from __future__ import annotations

import pytest
from schedsim import MS, config, three_classes

from tailguard.scheduler import ClassPolicy, OnTimeout, RateLimit, Reason


def test_classes_are_ordered_by_level_whatever_the_declared_order() -> None:
    cfg = config(classes=tuple(reversed(three_classes())))
    assert [c.name for c in cfg.by_level] == ["critical", "normal", "bulk"]


def test_model_rungs_are_the_rungs_that_are_not_cheap() -> None:
    assert config(n_rungs=4, cheap_rungs=frozenset({2, 3})).model_rungs == (0, 1)


def test_reason_values_are_stable_labels() -> None:
    assert {r.value for r in Reason} == {
        "queue_full", "rate_limited", "predicted_late", "expired", "shed_overload", "draining",
    }


@pytest.mark.parametrize(
    "kw",
    [
        {"classes": ()},
        {"classes": (ClassPolicy("a", 1, MS), ClassPolicy("a", 2, MS))},
        {"classes": (ClassPolicy("a", 1, MS), ClassPolicy("b", 1, MS))},
        {"n_rungs": 0, "cheap_rungs": frozenset()},
        {"cheap_rungs": frozenset({4})},
        {"n_rungs": 2, "cheap_rungs": frozenset({0, 1})},
        {"max_batch_size": 0},
        {"max_queue_delay_ns": -1},
        {"max_total_queued": 0},
        {"default_class": "nope"},
    ],
)
def test_invalid_configs_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        config(**kw)


@pytest.mark.parametrize(
    "kw", [{"level": 0}, {"budget_ns": -1}, {"max_queue_size": 0}, {"name": ""}],
)
def test_invalid_class_policies_are_refused(kw: dict[str, object]) -> None:
    args: dict[str, object] = {"name": "a", "level": 1, "budget_ns": MS}
    args.update(kw)
    with pytest.raises(ValueError):
        ClassPolicy(**args)  # type: ignore[arg-type]


def test_class_policy_defaults_to_degrade() -> None:
    assert ClassPolicy("a", 1, MS).on_timeout is OnTimeout.DEGRADE


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_invalid_rate_limits_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        RateLimit(rate, burst)


def test_rate_limit_interval_is_ns_per_token() -> None:
    assert RateLimit(1000.0, 5).interval_ns == 1_000_000
