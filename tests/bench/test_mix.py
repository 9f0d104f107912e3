"""Parsing class mixes and budgets; drawing classes by weight."""

from __future__ import annotations

import numpy as np
import pytest

from tailguard.bench.mix import parse_budgets, parse_mix


def test_weights_are_normalised_and_keep_their_order() -> None:
    m = parse_mix("critical=1,normal=3,bulk=6")
    assert m.names == ["critical", "normal", "bulk"]
    assert [round(c.weight, 6) for c in m.classes] == [0.1, 0.3, 0.6]


def test_a_bare_name_weighs_one() -> None:
    m = parse_mix("critical, bulk=3")
    assert [c.weight for c in m.classes] == [0.25, 0.75]


def test_an_empty_mix_is_the_servers_default_class() -> None:
    m = parse_mix("")
    assert m.names == [""] and m.classes[0].weight == 1.0
    assert m.describe() == "default=1.00"


def test_budgets_parse_durations_and_attach_by_name() -> None:
    b = parse_budgets("critical=300us, normal=2ms")
    assert b == pytest.approx({"critical": 300e-6, "normal": 2e-3})
    m = parse_mix("critical=0.5,bulk=0.5", b)
    assert m.classes[0].budget_s == pytest.approx(300e-6)
    assert m.classes[1].budget_s is None
    assert m.with_budgets({"bulk": 0.02}).classes[1].budget_s == 0.02


@pytest.mark.parametrize("text", ["critical=0", "critical=-1", "critical=x", "=1", "a=1,a=2",
                                  "critical=nan", "critical=inf"])
def test_bad_mixes_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_mix(text)


@pytest.mark.parametrize("text", ["critical", "critical=3", "critical=-1ms", "a=1ms,a=2ms"])
def test_bad_budgets_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_budgets(text)


def test_draw_follows_the_weights() -> None:
    m = parse_mix("critical=0.1,normal=0.3,bulk=0.6")
    counts = np.bincount(m.draw(np.random.default_rng(0), 100_000), minlength=3) / 100_000
    assert counts == pytest.approx([0.1, 0.3, 0.6], abs=0.01)


def test_one_class_draws_only_it() -> None:
    assert not parse_mix("bulk").draw(np.random.default_rng(0), 100).any()
