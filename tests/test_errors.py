"""The exception tree: stable codes, the documented hierarchy, and what errors carry."""

from __future__ import annotations

import pytest

from tailguard import errors
from tailguard.errors import (
    BudgetExhausted,
    FeatureError,
    FeatureVersionMismatch,
    ModelError,
    ModelLoadError,
    ModelNotFound,
    SpecError,
    TailguardError,
    UnknownPriority,
    ValidationError,
)

PARENT = {
    SpecError: TailguardError,
    ValidationError: TailguardError,
    UnknownPriority: ValidationError,
    FeatureError: TailguardError,
    FeatureVersionMismatch: FeatureError,
    ModelError: TailguardError,
    ModelLoadError: ModelError,
    ModelNotFound: ModelError,
    BudgetExhausted: TailguardError,
}


@pytest.mark.parametrize(("cls", "parent"), PARENT.items(), ids=lambda c: getattr(c, "__name__", ""))
def test_errors_follow_the_documented_tree(cls: type, parent: type) -> None:
    assert cls.__bases__ == (parent,)


def test_every_exported_error_is_in_the_tree() -> None:
    assert {getattr(errors, n) for n in errors.__all__} == {*PARENT, TailguardError}


def test_codes_are_unique() -> None:
    codes = [getattr(errors, n).code for n in errors.__all__]
    assert len(set(codes)) == len(codes)


@pytest.mark.parametrize("name", errors.__all__)
def test_the_module_docstring_draws_every_error_with_its_code(name: str) -> None:
    code = getattr(errors, name).code
    assert any(name in line and f'"{code}"' in line for line in (errors.__doc__ or "").splitlines())


def test_spec_error_carries_path_and_names_its_source() -> None:
    err = SpecError("bad", path="$.models[0]", source="service.toml")
    assert (err.path, str(err)) == ("$.models[0]", "service.toml: bad")


def test_validation_error_carries_the_field() -> None:
    assert UnknownPriority("nope", field="priority").field == "priority"


def test_feature_version_mismatch_names_model_and_view() -> None:
    err = FeatureVersionMismatch("alpha/1", "ticks", "aaa", "bbb")
    assert (err.model, err.view, err.pinned, err.live) == ("alpha/1", "ticks", "aaa", "bbb")
    assert "'ticks'" in str(err) and "'alpha/1'" in str(err)
