"""Feature views: compiled defaults and dtypes, and what does or does not change a version."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from tailguard.errors import FeatureError
from tailguard.features.view import compile_views, view_version
from tailguard.spec import Duration, FeatureViewSpec, FieldSpec, ViewSource

BASE = FeatureViewSpec(
    name="stats",
    entity="item",
    fields=(
        FieldSpec(name="a", dtype="float32", default=1.5),
        FieldSpec(name="n", dtype="int64", default=-1.0),
    ),
    transform="feats:Stats",
    ttl=Duration(10.0),
    description="item statistics",
)

MODULE = '''"""A transform module."""


class Stats:
    fields = ("a", "n")

    def new_state(self):
        return [0.0, 0]

    def update(self, state, event):
        state[0] = float(event["a"])
        state[1] += 1

    def values(self, state):
        return state
'''


def replace(spec: FeatureViewSpec, **changes: object) -> FeatureViewSpec:
    return msgspec.structs.replace(spec, **changes)


def with_field(spec: FeatureViewSpec, index: int, **changes: object) -> FeatureViewSpec:
    fields = list(spec.fields)
    fields[index] = msgspec.structs.replace(fields[index], **changes)
    return replace(spec, fields=tuple(fields))


def compiled_version(directory: Path, spec: FeatureViewSpec, source: str = MODULE) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "feats.py").write_text(source)
    return compile_views((spec,), str(directory))["stats"].version


def test_version_is_deterministic(tmp_path: Path) -> None:
    assert compiled_version(tmp_path / "a", BASE) == compiled_version(tmp_path / "b", BASE)


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(with_field(BASE, 0, name="b"), id="field-name"),
        pytest.param(with_field(BASE, 0, dtype="float64"), id="field-dtype"),
        pytest.param(with_field(BASE, 1, default=0.0), id="field-default"),
        pytest.param(replace(BASE, fields=(*BASE.fields, FieldSpec(name="c"))), id="added-field"),
        pytest.param(replace(BASE, fields=BASE.fields[::-1]), id="field-order"),
        pytest.param(replace(BASE, entity="shop"), id="entity"),
        pytest.param(replace(BASE, name="stats2"), id="view-name"),
    ],
)
def test_version_changes_with_the_schema(changed: FeatureViewSpec) -> None:
    assert view_version(changed, None) != view_version(BASE, None)


def test_version_changes_with_the_transform_reference() -> None:
    assert view_version(replace(BASE, transform="feats:Other"), None) != view_version(BASE, None)


def test_version_changes_with_request_inputs() -> None:
    req = FeatureViewSpec(name="q", source=ViewSource.REQUEST, inputs=("x",), fields=(FieldSpec(name="x"),))
    assert view_version(replace(req, inputs=("y",)), None) != view_version(req, None)


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(replace(BASE, description="something else"), id="view-description"),
        pytest.param(with_field(BASE, 0, description="a field"), id="field-description"),
        pytest.param(replace(BASE, ttl=Duration(99.0)), id="ttl"),
        pytest.param(replace(BASE, ttl=None), id="no-ttl"),
    ],
)
def test_version_ignores_what_does_not_change_values(changed: FeatureViewSpec, tmp_path: Path) -> None:
    assert compiled_version(tmp_path / "a", changed) == compiled_version(tmp_path / "b", BASE)


def test_version_changes_with_the_transform_module_source(tmp_path: Path) -> None:
    edited = MODULE.replace("state[1] += 1", "state[1] += 2")
    assert compiled_version(tmp_path / "a", BASE, edited) != compiled_version(tmp_path / "b", BASE)


def test_version_changes_with_a_helper_elsewhere_in_the_module(tmp_path: Path) -> None:
    edited = MODULE + "\n\ndef helper():\n    return 1\n"
    assert compiled_version(tmp_path / "a", BASE, edited) != compiled_version(tmp_path / "b", BASE)


def test_default_row_holds_the_declared_defaults_in_declared_dtypes() -> None:
    view = compile_views((replace(BASE, transform=None),))["stats"]
    assert view.default_row.dtype == np.dtype([("a", "float32"), ("n", "int64")])
    assert (float(view.default_row["a"]), int(view.default_row["n"])) == (1.5, -1)


def test_default_vector_is_float32_in_field_order() -> None:
    view = compile_views((replace(BASE, transform=None),))["stats"]
    assert view.default_f32.dtype == np.float32
    assert view.default_f32.tolist() == [1.5, -1.0]


def test_qualified_names_prefix_the_view() -> None:
    view = compile_views((replace(BASE, transform=None),))["stats"]
    assert view.qualified() == ("stats.a", "stats.n")


def test_ttl_is_held_in_nanoseconds() -> None:
    view = compile_views((replace(BASE, transform=None, ttl=Duration(0.25)),))["stats"]
    assert view.ttl_ns == 250_000_000


def test_passthrough_request_view_must_name_its_inputs_as_fields() -> None:
    req = FeatureViewSpec(
        name="q", source=ViewSource.REQUEST, inputs=("x", "y"), fields=(FieldSpec(name="x"),)
    )
    with pytest.raises(FeatureError, match="'q'"):
        compile_views((req,))


def test_passthrough_request_view_compiles_without_transform() -> None:
    req = FeatureViewSpec(name="q", source=ViewSource.REQUEST, inputs=("x",), fields=(FieldSpec(name="x"),))
    view = compile_views((req,))["q"]
    assert view.is_request and view.transform is None
