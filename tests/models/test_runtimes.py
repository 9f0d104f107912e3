"""Model runtimes: compiled trees and ONNX Runtime agree with LightGBM and with each other."""

from __future__ import annotations

import ctypes.util
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tailguard.errors import ModelLoadError
from tailguard.models.manifest import read_manifest
from tailguard.models.onnx import OnnxRuntime
from tailguard.models.trees import TreesRuntime

BATCH_SIZES = [1, 7, 64, 300]


@pytest.fixture(scope="module")
def primary_dir(toy_dir: Path) -> Path:
    return toy_dir / "models" / "primary" / "1"


@pytest.fixture(scope="module")
def booster(primary_dir: Path) -> object:
    import lightgbm as lgb

    return lgb.Booster(model_file=str(primary_dir / "model.txt"))


@pytest.fixture
def trees(primary_dir: Path) -> TreesRuntime:
    return TreesRuntime(primary_dir / "model.so")


@pytest.fixture
def onnx_rt(primary_dir: Path) -> OnnxRuntime:
    a = read_manifest(primary_dir).artifact("onnx")
    assert a is not None
    return OnnxRuntime(
        primary_dir / a.path,
        input_name=a.input_name,
        output_name=a.output_name,
        output_columns=a.output_columns,
    )


def inputs(n: int, seed: int = 0) -> np.ndarray:
    """Rows like the primary model's training data, a fifth of the values missing (NaN)."""
    rng = np.random.default_rng(seed + n)
    x = np.column_stack(
        [rng.uniform(90, 110, n), rng.integers(0, 20, n), rng.uniform(1, 10, n), rng.uniform(90, 1100, n),
         rng.uniform(0.0, 0.1, n)]
    ).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = np.nan
    return x


def onnx_file(path: Path, *, in_type: int = TensorProto.FLOAT, in_shape: list = (None, 3),
              out_type: int | None = None) -> Path:
    """A one-node graph: Identity (or Cast to ``out_type``) from input ``x`` to output ``y``."""
    node = (
        helper.make_node("Identity", ["x"], ["y"])
        if out_type is None
        else helper.make_node("Cast", ["x"], ["y"], to=out_type)
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", in_type, list(in_shape))],
        [helper.make_tensor_value_info("y", out_type or in_type, list(in_shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)
    onnx.save(model, str(path))
    return path


# -- compiled trees ------------------------------------------------------------------------------
def test_trees_report_the_model_signature(trees: TreesRuntime) -> None:
    assert (trees.n_inputs, trees.n_outputs) == (5, 1)


@pytest.mark.parametrize("n", BATCH_SIZES)
def test_trees_match_lightgbm_including_missing_values(trees: TreesRuntime, booster: object, n: int) -> None:
    x = inputs(n)
    y = trees.run(x)
    assert y.dtype == np.float64 and y.shape == (n, 1)
    np.testing.assert_allclose(y[:, 0], booster.predict(x), rtol=0, atol=1e-12)  # type: ignore[attr-defined]


def test_trees_give_the_same_rows_whatever_the_batch(trees: TreesRuntime) -> None:
    x = inputs(300)
    big = trees.run(x).copy()
    small = trees.run(x[:7]).copy()
    one = trees.run(x[5:6]).copy()
    assert np.array_equal(small, big[:7]) and np.array_equal(one, big[5:6])


def test_trees_accept_non_contiguous_input(trees: TreesRuntime) -> None:
    x = inputs(64)
    wide = np.repeat(x, 2, axis=1)[:, ::2]
    assert not wide.flags.c_contiguous
    assert np.array_equal(trees.run(wide).copy(), trees.run(x).copy())


def test_trees_file_that_is_not_a_library_is_a_load_error(tmp_path: Path) -> None:
    path = tmp_path / "model.so"
    path.write_bytes(b"not a library")
    with pytest.raises(ModelLoadError, match="no sources"):
        TreesRuntime(path)


def test_trees_library_without_entry_point_is_a_load_error() -> None:
    libm = ctypes.util.find_library("m")
    if libm is None:
        pytest.skip("no libm to load on this machine")
    with pytest.raises(ModelLoadError, match="tg_predict"):
        TreesRuntime(libm)


def test_trees_library_the_loader_rejects_is_rebuilt_from_sources(
    primary_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    copy = Path(shutil.copytree(primary_dir, tmp_path / "1"))
    (copy / "model.so").write_bytes(b"built for another machine")
    x = inputs(7)
    rebuilt = TreesRuntime(copy / "model.so").run(x).copy()
    assert np.array_equal(rebuilt, TreesRuntime(primary_dir / "model.so").run(x))


# -- ONNX Runtime ----------------------------------------------------------------------------
@pytest.mark.parametrize("n", BATCH_SIZES)
def test_onnx_matches_trees_including_missing_values(
    onnx_rt: OnnxRuntime, trees: TreesRuntime, n: int
) -> None:
    x = inputs(n)
    np.testing.assert_allclose(onnx_rt.run(x), trees.run(x), rtol=0, atol=1e-6)


def test_onnx_reports_the_selected_output_columns(onnx_rt: OnnxRuntime) -> None:
    assert (onnx_rt.n_inputs, onnx_rt.n_outputs) == (5, 1)


@pytest.mark.parametrize("n", BATCH_SIZES)
def test_onnx_identity_returns_its_input_as_float64(tmp_path: Path, n: int) -> None:
    rt = OnnxRuntime(onnx_file(tmp_path / "id.onnx"))
    x = np.arange(3 * n, dtype=np.float32).reshape(n, 3)
    y = rt.run(x)
    assert y.dtype == np.float64
    assert np.array_equal(y, x)


def test_onnx_selects_output_columns_of_a_double_output(tmp_path: Path) -> None:
    rt = OnnxRuntime(onnx_file(tmp_path / "cast.onnx", out_type=TensorProto.DOUBLE), output_columns=(2, 0))
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert rt.run(x).tolist() == [[2.0, 0.0], [5.0, 3.0]]


def test_onnx_selects_output_columns_of_a_float_output(tmp_path: Path) -> None:
    rt = OnnxRuntime(onnx_file(tmp_path / "id.onnx"), output_columns=(2, 0))
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert rt.run(x).tolist() == [[2.0, 0.0], [5.0, 3.0]]


def test_onnx_results_stay_right_when_bound_batches_are_evicted(tmp_path: Path) -> None:
    rt = OnnxRuntime(onnx_file(tmp_path / "id.onnx"), max_cached_batches=2)
    for n in (1, 2, 3, 1, 2, 3):
        x = np.full((n, 3), float(n), dtype=np.float32)
        assert np.array_equal(rt.run(x), x)


def test_onnx_file_that_is_not_a_model_is_a_load_error(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="cannot load"):
        OnnxRuntime(path)


def test_onnx_input_must_be_float32(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="float32"):
        OnnxRuntime(onnx_file(tmp_path / "d.onnx", in_type=TensorProto.DOUBLE))


def test_onnx_input_must_be_a_matrix(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="batch, n_features"):
        OnnxRuntime(onnx_file(tmp_path / "3d.onnx", in_shape=[None, 3, 2]))


def test_onnx_output_must_be_float(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="must be float"):
        OnnxRuntime(onnx_file(tmp_path / "i.onnx", out_type=TensorProto.INT64))


def test_onnx_named_output_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no output named"):
        OnnxRuntime(onnx_file(tmp_path / "id.onnx"), output_name="probabilities")
