"""Ladder compilation (column maps, output agreement) and the per-entity last-good memory."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tailguard.errors import SpecError
from tailguard.models.manifest import Artifact, Manifest
from tailguard.models.repository import LoadedModel
from tailguard.resilience.ladder import LastGood, compile_ladder
from tailguard.spec import Duration, RungKind, RungSpec

COLUMNS = ("v.a", "v.b", "v.c")


class _Echo:
    kind = "echo"

    def __init__(self, n_inputs: int) -> None:
        self.n_inputs = n_inputs
        self.n_outputs = 1

    def run(self, x: np.ndarray) -> np.ndarray:
        return x[:, :1].astype(np.float64)


def model(name: str, inputs: tuple[str, ...], outputs: tuple[str, ...] = ("p",)) -> LoadedModel:
    m = Manifest(
        name=name, version="1", inputs=inputs, outputs=outputs, feature_versions={"v": "x"},
        artifacts=(Artifact(kind="onnx", path="m.onnx", sha256=""),),
    )
    return LoadedModel(name=name, version="1", manifest=m, runtime=_Echo(len(inputs)))


def rung(name: str, kind: RungKind, **kw: object) -> RungSpec:
    return RungSpec(name=name, kind=kind, **kw)  # type: ignore[arg-type]


LADDER = (
    rung("primary", RungKind.MODEL, model="big"),
    rung("fast", RungKind.MODEL, model="small"),
    rung("last_good", RungKind.LAST_GOOD, max_age=Duration(2.0)),
    rung("default", RungKind.DEFAULT, outputs={"p": 0.5}),
)
MODELS = {"big": model("big", COLUMNS), "small": model("small", ("v.c", "v.a"))}


def test_rungs_keep_spec_order_and_names() -> None:
    rungs, _ = compile_ladder(LADDER, MODELS, COLUMNS)
    assert [r.name for r in rungs] == ["primary", "fast", "last_good", "default"]
    assert [r.index for r in rungs] == [0, 1, 2, 3]


def test_outputs_are_the_models_outputs() -> None:
    assert compile_ladder(LADDER, MODELS, COLUMNS)[1] == ("p",)


def test_model_reading_the_wide_vector_as_is_needs_no_column_map() -> None:
    rungs, _ = compile_ladder(LADDER, MODELS, COLUMNS)
    assert rungs[0].cols is None


def test_model_reading_other_columns_gathers_them_in_its_input_order() -> None:
    rungs, _ = compile_ladder(LADDER, MODELS, COLUMNS)
    wide = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
    assert rungs[1].gather(wide, 1).tolist() == [[3.0, 1.0]]
    assert rungs[1].gather(wide, 2).tolist() == [[3.0, 1.0], [6.0, 4.0]]


def test_gather_grows_past_its_preallocated_rows() -> None:
    rungs, _ = compile_ladder(LADDER, MODELS, COLUMNS)
    wide = np.arange(300 * 3, dtype=np.float32).reshape(300, 3)
    assert np.array_equal(rungs[1].gather(wide, 300), wide[:, [2, 0]])


def test_max_age_is_held_in_nanoseconds() -> None:
    rungs, _ = compile_ladder(LADDER, MODELS, COLUMNS)
    assert rungs[2].max_age_ns == 2_000_000_000


def test_default_rung_holds_its_outputs_read_only() -> None:
    rungs, _ = compile_ladder(LADDER, MODELS, COLUMNS)
    assert rungs[3].default.tolist() == [0.5]
    assert not rungs[3].default.flags.writeable


def test_default_outputs_follow_the_models_output_order() -> None:
    models = {"big": model("big", COLUMNS, ("q", "p")), "small": model("small", COLUMNS, ("q", "p"))}
    ladder = (*LADDER[:3], rung("default", RungKind.DEFAULT, outputs={"p": 0.5, "q": 0.25}))
    rungs, outputs = compile_ladder(ladder, models, COLUMNS)
    assert (outputs, rungs[3].default.tolist()) == (("q", "p"), [0.25, 0.5])


def test_models_answering_different_outputs_name_the_rung() -> None:
    models = {**MODELS, "small": model("small", COLUMNS, ("score",))}
    with pytest.raises(SpecError) as info:
        compile_ladder(LADDER, models, COLUMNS)
    assert info.value.path == "$.ladder[1].model"


def test_default_outputs_that_differ_from_the_models_name_the_rung() -> None:
    ladder = (*LADDER[:3], rung("default", RungKind.DEFAULT, outputs={"q": 0.5}))
    with pytest.raises(SpecError) as info:
        compile_ladder(ladder, MODELS, COLUMNS)
    assert info.value.path == "$.ladder[3].outputs"


def test_model_reading_columns_no_view_serves_names_the_rung() -> None:
    models = {**MODELS, "small": model("small", ("v.z",))}
    with pytest.raises(SpecError) as info:
        compile_ladder(LADDER, models, COLUMNS)
    assert info.value.path == "$.ladder[1].model"


# -- last good ---------------------------------------------------------------------------------
def test_last_good_serves_the_latest_answer_of_the_row() -> None:
    lg = LastGood(1)
    lg.put(3, np.array([0.1]), 10)
    lg.put(3, np.array([0.7]), 20)
    assert lg.get(3, 25, None).tolist() == [0.7]  # type: ignore[union-attr]


def test_last_good_never_serves_the_unknown_entity_row() -> None:
    lg = LastGood(1)
    lg.put(0, np.array([0.1]), 10)
    assert lg.get(0, 10, None) is None


def test_last_good_has_nothing_for_a_row_never_answered() -> None:
    assert LastGood(1).get(5, 10, None) is None


def test_last_good_at_max_age_is_served_and_older_is_not() -> None:
    lg = LastGood(1)
    lg.put(1, np.array([0.1]), 100)
    assert lg.get(1, 150, 50) is not None
    assert lg.get(1, 151, 50) is None


def test_last_good_returns_a_copy() -> None:
    lg = LastGood(1)
    lg.put(1, np.array([0.1]), 100)
    lg.get(1, 100, None)[0] = 9.0  # type: ignore[index]
    assert lg.get(1, 100, None).tolist() == [0.1]  # type: ignore[union-attr]


def test_last_good_grows_for_rows_beyond_its_capacity() -> None:
    lg = LastGood(1, capacity=4)
    lg.put(1, np.array([0.1]), 100)
    lg.put_many(np.array([10, 2000]), np.array([[0.2], [0.3]]), 200)
    assert [lg.get(r, 200, None).tolist() for r in (1, 10, 2000)] == [[0.1], [0.2], [0.3]]  # type: ignore[union-attr]


@given(
    writes=st.lists(
        st.tuples(st.integers(0, 40), st.integers(1, 1000)), max_size=30
    ),
    rows=st.lists(st.integers(0, 60), min_size=1, max_size=30),
    now=st.integers(1000, 2000),
    max_age=st.one_of(st.none(), st.integers(0, 1500)),
)
def test_last_good_availability_mask_agrees_with_get(
    writes: list[tuple[int, int]], rows: list[int], now: int, max_age: int | None
) -> None:
    lg = LastGood(1, capacity=8)
    for row, t in writes:
        lg.put(row, np.array([float(t)]), t)
    mask = lg.available(np.array(rows, dtype=np.int64), now, max_age)
    assert mask.tolist() == [lg.get(r, now, max_age) is not None for r in rows]
