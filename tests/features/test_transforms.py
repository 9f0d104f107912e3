"""Transform resolution: module loading from a service directory and the checks at load."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tailguard.errors import FeatureError
from tailguard.features.transforms import StreamTransform, load_module, resolve_transform
from tailguard.features.view import compile_views
from tailguard.spec import FeatureViewSpec, FieldSpec, ViewSource

STREAM_MODULE = '''"""Stream transforms for tests."""

SCALE = {scale!r}


class Counter:
    fields = ("n",)

    def new_state(self):
        return [0.0]

    def update(self, state, event):
        state[0] += SCALE

    def values(self, state):
        return state


class WrongFields(Counter):
    fields = ("m",)


class NotATransform:
    pass
'''

REQUEST_MODULE = '''"""Request transforms for tests."""

import itertools

_calls = itertools.count()


def double(x):
    return (x * 2.0,)


def two_outputs(x):
    return x, x


def not_deterministic(x):
    return (x + next(_calls),)


def raises(x):
    raise ZeroDivisionError("boom")


NOT_CALLABLE = 3
'''


SIBLING_MODULE = '''"""A stream transform that imports a sibling module of its service directory."""

from {helper} import SCALE


class Counter:
    fields = ("n",)

    def new_state(self):
        return [0.0]

    def update(self, state, event):
        state[0] += SCALE

    def values(self, state):
        return state
'''


def make_dir(path: Path, scale: float = 1.0, helper: str = "helper") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "feats.py").write_text(STREAM_MODULE.format(scale=scale))
    (path / "reqs.py").write_text(REQUEST_MODULE)
    (path / "sib.py").write_text(SIBLING_MODULE.format(helper=helper))
    (path / f"{helper}.py").write_text(f"SCALE = {scale!r}\n")
    return path


@pytest.fixture
def helper_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A sibling module name unique to the test, forgotten afterwards (it lands in sys.modules)."""
    name = f"helper_{request.node.name.replace('[', '_').replace(']', '_').replace('-', '_')}"
    yield name
    sys.modules.pop(name, None)


def stream_view(transform: str) -> FeatureViewSpec:
    return FeatureViewSpec(name="counts", entity="item", fields=(FieldSpec(name="n"),), transform=transform)


def request_view(transform: str) -> FeatureViewSpec:
    return FeatureViewSpec(
        name="req",
        source=ViewSource.REQUEST,
        inputs=("x",),
        fields=(FieldSpec(name="y"),),
        transform=transform,
    )


def run_counter(transform: StreamTransform, events: int) -> float:
    state = transform.new_state()
    for _ in range(events):
        transform.update(state, {})
    return transform.values(state)[0]


def test_stream_transform_class_is_instantiated(tmp_path: Path) -> None:
    inst = resolve_transform(stream_view("feats:Counter"), str(make_dir(tmp_path)))
    assert isinstance(inst, StreamTransform)
    assert run_counter(inst, 3) == 3.0


def test_same_module_name_in_two_directories_does_not_collide(tmp_path: Path) -> None:
    one = resolve_transform(stream_view("feats:Counter"), str(make_dir(tmp_path / "a", scale=1.0)))
    ten = resolve_transform(stream_view("feats:Counter"), str(make_dir(tmp_path / "b", scale=10.0)))
    assert (run_counter(one, 1), run_counter(ten, 1)) == (1.0, 10.0)


def test_a_transform_module_may_import_its_siblings(tmp_path: Path, helper_name: str) -> None:
    inst = resolve_transform(stream_view("sib:Counter"), str(make_dir(tmp_path, 3.0, helper_name)))
    assert run_counter(inst, 1) == 3.0


def test_sibling_modules_of_two_directories_do_not_collide(tmp_path: Path, helper_name: str) -> None:
    one = resolve_transform(stream_view("sib:Counter"), str(make_dir(tmp_path / "a", 1.0, helper_name)))
    ten = resolve_transform(stream_view("sib:Counter"), str(make_dir(tmp_path / "b", 10.0, helper_name)))
    assert (run_counter(one, 1), run_counter(ten, 1)) == (1.0, 10.0)


def test_loading_leaves_sys_path_as_it_was(tmp_path: Path) -> None:
    before = list(sys.path)
    load_module(str(make_dir(tmp_path)), "feats")
    assert sys.path == before


def test_a_module_loads_once_per_directory(tmp_path: Path) -> None:
    d = str(make_dir(tmp_path))
    assert load_module(d, "feats") is load_module(d, "feats")


def test_module_outside_the_directory_is_imported_normally(tmp_path: Path) -> None:
    assert load_module(str(tmp_path), "json") is __import__("json")


def test_edited_transform_module_is_reloaded_with_its_new_version(tmp_path: Path) -> None:
    d = make_dir(tmp_path)
    spec = stream_view("feats:Counter")
    compile_views((spec,), str(d))
    (d / "feats.py").write_text(STREAM_MODULE.format(scale=1.0).replace("+= SCALE", "+= 2 * SCALE"))
    view = compile_views((spec,), str(d))["counts"]
    assert run_counter(view.transform, 1) == 2.0  # type: ignore[arg-type]


def test_module_that_fails_to_import_is_a_feature_error(tmp_path: Path) -> None:
    d = make_dir(tmp_path)
    (d / "broken.py").write_text("raise RuntimeError('nope')\n")
    with pytest.raises(FeatureError, match="broken"):
        load_module(str(d), "broken")


def test_missing_attribute_names_the_view(tmp_path: Path) -> None:
    with pytest.raises(FeatureError, match="'counts'"):
        resolve_transform(stream_view("feats:Missing"), str(make_dir(tmp_path)))


def test_stream_transform_without_the_protocol_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(FeatureError, match="new_state"):
        resolve_transform(stream_view("feats:NotATransform"), str(make_dir(tmp_path)))


def test_stream_transform_fields_must_match_the_view(tmp_path: Path) -> None:
    with pytest.raises(FeatureError, match="declares"):
        resolve_transform(stream_view("feats:WrongFields"), str(make_dir(tmp_path)))


def test_request_transform_is_returned_as_is(tmp_path: Path) -> None:
    fn = resolve_transform(request_view("reqs:double"), str(make_dir(tmp_path)))
    assert fn(2.0) == (4.0,)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("two_outputs", "returns 2 values"),
        ("not_deterministic", "not deterministic"),
        ("raises", "failed on probe input"),
        ("NOT_CALLABLE", "not callable"),
    ],
)
def test_request_transform_is_probed_at_load(tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(FeatureError, match=message):
        resolve_transform(request_view(f"reqs:{name}"), str(make_dir(tmp_path)))
