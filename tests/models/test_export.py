"""Exporting a LightGBM booster as a repository version."""

from __future__ import annotations

from pathlib import Path

import pytest
from toyservice import train_booster, training_matrix

from tailguard.models.export import export_lightgbm
from tailguard.models.manifest import read_manifest

INPUTS = ("v.a", "v.b", "v.c", "v.d", "v.e")


@pytest.fixture(scope="module")
def booster() -> object:
    x, y = training_matrix(200, seed=11)
    return train_booster(x, y, rounds=3, leaves=4)


def export(booster: object, root: Path, version: str = "1", **kwargs: object) -> None:
    export_lightgbm(booster, root, "m", version, inputs=INPUTS, outputs=("p",),
                    feature_versions={"v": "abc"}, **kwargs)  # type: ignore[arg-type]


def test_export_writes_a_verified_version_with_onnx_and_trees(booster: object, tmp_path: Path) -> None:
    export(booster, tmp_path)
    assert {a.kind for a in read_manifest(tmp_path / "m" / "1").artifacts} == {"onnx", "trees"}


def test_export_records_signature_and_pins(booster: object, tmp_path: Path) -> None:
    export(booster, tmp_path, training={"rows": 200})
    m = read_manifest(tmp_path / "m" / "1")
    assert (m.inputs, m.outputs) == (INPUTS, ("p",))
    assert (m.feature_versions, m.training) == ({"v": "abc"}, {"rows": 200})


def test_export_without_compiled_trees_writes_onnx_only(booster: object, tmp_path: Path) -> None:
    export(booster, tmp_path, compile_trees=False)
    assert [a.kind for a in read_manifest(tmp_path / "m" / "1").artifacts] == ["onnx"]


def test_export_leaves_no_temporary_directory(booster: object, tmp_path: Path) -> None:
    export(booster, tmp_path, compile_trees=False)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]


def test_export_over_an_existing_version_replaces_it(booster: object, tmp_path: Path) -> None:
    export(booster, tmp_path)
    export(booster, tmp_path, compile_trees=False)
    assert [a.kind for a in read_manifest(tmp_path / "m" / "1").artifacts] == ["onnx"]
