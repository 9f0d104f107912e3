"""The model repository: version policy, and every model error surfacing at load time."""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec
import numpy as np
import pytest
from toyservice import live_versions

from tailguard.errors import FeatureVersionMismatch, ModelLoadError, ModelNotFound
from tailguard.models.manifest import read_manifest, write_manifest
from tailguard.models.repository import LoadedModel, list_versions, load_model, resolve_version, warm_up
from tailguard.spec import ModelSpec
from tailguard.testing import FailingRuntime, FakeClock

PRIMARY = ModelSpec(name="primary", repository="models", warmup=2)


@pytest.fixture(scope="module")
def live(toy_dir: Path) -> dict[str, str]:
    return live_versions(toy_dir)


def add_version(root: Path, name: str, version: str, source: Path) -> Path:
    """Copy a version directory to ``root/name/version``, its manifest relabelled to match."""
    d = Path(shutil.copytree(source, root / name / version))
    write_manifest(d, msgspec.structs.replace(read_manifest(d), version=version))
    return d


@pytest.fixture
def repo(toy_dir: Path, tmp_path: Path) -> Path:
    """A service-like directory whose repository holds primary versions 1, 2 and 10."""
    source = toy_dir / "models" / "primary" / "1"
    for v in ("1", "2", "10"):
        add_version(tmp_path / "models", "primary", v, source)
    return tmp_path


def test_versions_sort_numerically(repo: Path) -> None:
    assert list_versions(repo / "models", "primary") == ["1", "2", "10"]


def test_directories_without_manifest_are_not_versions(repo: Path) -> None:
    (repo / "models" / "primary" / "11").mkdir()
    assert list_versions(repo / "models", "primary") == ["1", "2", "10"]


def test_temporary_export_directory_is_not_a_version(repo: Path) -> None:
    add_version(repo / "models", "primary", ".11.tmp", repo / "models" / "primary" / "1")
    assert resolve_version(PRIMARY, repo / "models") == "10"


def test_unknown_model_has_no_versions(repo: Path) -> None:
    assert list_versions(repo / "models", "nothing") == []


def test_latest_policy_picks_the_highest_version(repo: Path) -> None:
    assert resolve_version(PRIMARY, repo / "models") == "10"


def test_pinned_policy_picks_the_pinned_version(repo: Path) -> None:
    spec = msgspec.structs.replace(PRIMARY, version_policy="pinned", version="2")
    assert resolve_version(spec, repo / "models") == "2"


def test_pinned_version_that_is_absent_is_not_found(repo: Path) -> None:
    spec = msgspec.structs.replace(PRIMARY, version_policy="pinned", version="3")
    with pytest.raises(ModelNotFound, match="'3'"):
        resolve_version(spec, repo / "models")


def test_model_without_versions_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        resolve_version(PRIMARY, tmp_path)


def test_load_picks_the_runtime_and_version(repo: Path, live: dict[str, str]) -> None:
    m = load_model(PRIMARY, repo, live)
    assert (m.label, m.runtime.kind) == ("primary/10", "trees")


def test_load_refuses_a_mismatched_feature_version_naming_the_view(repo: Path, live: dict[str, str]) -> None:
    changed = {**live, "stats": "0123456789abcdef"}
    with pytest.raises(FeatureVersionMismatch) as info:
        load_model(PRIMARY, repo, changed)
    err = info.value
    assert (err.view, err.pinned, err.live) == ("stats", live["stats"], "0123456789abcdef")


def test_load_refuses_a_model_reading_a_view_not_served(repo: Path, live: dict[str, str]) -> None:
    served = {k: v for k, v in live.items() if k != "order"}
    with pytest.raises(FeatureVersionMismatch) as info:
        load_model(PRIMARY, repo, served)
    assert info.value.view == "order"


def test_load_refuses_inputs_from_a_view_the_manifest_does_not_pin(repo: Path, live: dict[str, str]) -> None:
    d = repo / "models" / "primary" / "10"
    m = read_manifest(d)
    write_manifest(d, msgspec.structs.replace(m, feature_versions={"stats": m.feature_versions["stats"]}))
    with pytest.raises(ModelLoadError, match="does not pin"):
        load_model(PRIMARY, repo, live)


def test_load_refuses_a_signature_the_artifact_does_not_have(repo: Path, live: dict[str, str]) -> None:
    d = repo / "models" / "primary" / "10"
    m = read_manifest(d)
    write_manifest(d, msgspec.structs.replace(m, inputs=m.inputs[:-1]))
    with pytest.raises(ModelLoadError, match="4 inputs"):
        load_model(PRIMARY, repo, live)


def test_load_refuses_outputs_the_artifact_does_not_have(repo: Path, live: dict[str, str]) -> None:
    d = repo / "models" / "primary" / "10"
    write_manifest(d, msgspec.structs.replace(read_manifest(d), outputs=("p", "q")))
    with pytest.raises(ModelLoadError, match="2 outputs"):
        load_model(PRIMARY, repo, live)


def test_deleted_artifact_fails_at_load(repo: Path, live: dict[str, str]) -> None:
    (repo / "models" / "primary" / "10" / "model.onnx").unlink()
    with pytest.raises(ModelLoadError):
        load_model(PRIMARY, repo, live)


def test_manifest_naming_another_version_fails_at_load(repo: Path, live: dict[str, str]) -> None:
    d = repo / "models" / "primary" / "10"
    write_manifest(d, msgspec.structs.replace(read_manifest(d), version="2"))
    with pytest.raises(ModelLoadError, match="path says primary/10"):
        load_model(PRIMARY, repo, live)


def test_explicit_version_without_manifest_fails_at_load(repo: Path, live: dict[str, str]) -> None:
    with pytest.raises(ModelLoadError):
        load_model(PRIMARY, repo, live, version="99")


def test_trees_runtime_asked_without_a_trees_artifact_fails_at_load(repo: Path, live: dict[str, str]) -> None:
    d = repo / "models" / "primary" / "10"
    m = read_manifest(d)
    write_manifest(d, msgspec.structs.replace(m, artifacts=tuple(a for a in m.artifacts if a.kind == "onnx")))
    with pytest.raises(ModelLoadError, match="no trees artifact"):
        load_model(msgspec.structs.replace(PRIMARY, runtime="trees"), repo, live)


def test_onnx_runtime_is_used_when_asked(repo: Path, live: dict[str, str]) -> None:
    spec = msgspec.structs.replace(PRIMARY, runtime="onnx", warmup=0)
    assert load_model(spec, repo, live).runtime.kind == "onnx"


def test_auto_falls_back_to_onnx_when_compiled_trees_cannot_load(repo: Path, live: dict[str, str]) -> None:
    d = repo / "models" / "primary" / "10"
    shutil.rmtree(d / "trees_src")
    (d / "model.so").write_bytes(b"not a library")
    write_manifest(d, read_manifest(d, verify=False))
    assert load_model(msgspec.structs.replace(PRIMARY, warmup=0), repo, live).runtime.kind == "onnx"


def test_onnx_model_loads_with_warm_up(repo: Path, live: dict[str, str]) -> None:
    spec = msgspec.structs.replace(PRIMARY, runtime="onnx", warmup=2)
    assert load_model(spec, repo, live).runtime.kind == "onnx"


def test_warm_up_seeds_the_service_time_estimate(repo: Path, live: dict[str, str]) -> None:
    m = load_model(PRIMARY, repo, live)  # the real clock: warm-up takes measurable time
    assert m.service_time.expected_ns(1) > 0.0 and m.service_time.expected_ns(64) > 0.0


def test_warm_up_runs_the_declared_number_of_inferences(repo: Path, live: dict[str, str]) -> None:
    m = load_model(msgspec.structs.replace(PRIMARY, warmup=0), repo, live)
    counting = FailingRuntime(m.runtime, mode=None)
    m.runtime = counting
    warm_up(m, 3, batch_sizes=(1, 64), clock=FakeClock())
    assert counting.calls == 6


def test_warm_up_refuses_non_finite_outputs(repo: Path, live: dict[str, str]) -> None:
    m = load_model(msgspec.structs.replace(PRIMARY, warmup=0), repo, live)
    nan = LoadedModel(
        name=m.name, version=m.version, manifest=m.manifest, runtime=FailingRuntime(m.runtime, "nan")
    )
    with pytest.raises(ModelLoadError, match="non-finite"):
        warm_up(nan, 1)


def test_loaded_model_runs_like_its_artifact(repo: Path, live: dict[str, str]) -> None:
    from tailguard.models.trees import TreesRuntime

    m = load_model(PRIMARY, repo, live)
    x = np.linspace(0.0, 100.0, 25, dtype=np.float32).reshape(5, 5)
    expected = TreesRuntime(repo / "models" / "primary" / "10" / "model.so").run(x).copy()
    assert np.array_equal(m.runtime.run(x), expected)
