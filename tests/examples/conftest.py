"""Fixtures of the example tests.  A test module names its example and how small to train it
(``EXAMPLE = "gaming"``, ``TRAIN_KWARGS = {...}``); ``trained`` and ``modules`` read them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("examplekit")

from examplekit import example_modules, trained_copy  # noqa: E402


@pytest.fixture(scope="module")
def trained(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A copy of the module's example with tiny models (ONNX only, no C compile): dir and metrics."""
    return trained_copy(tmp_path_factory, request.module.EXAMPLE, **request.module.TRAIN_KWARGS)


@pytest.fixture(scope="module")
def modules(trained: tuple[Path, dict[str, Any]]) -> tuple[Any, Any, Any]:
    """The trained copy's ``events``, ``train`` and ``run`` modules."""
    return example_modules(trained[0])
