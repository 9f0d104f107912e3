"""Loading a service directory: everything that can fail fails here, never at a request."""

from __future__ import annotations

import gc
from pathlib import Path

import msgspec
import numpy as np
import pytest
from toyservice import CTX, MODULE_SOURCE, render_spec, train_models, write_service

from tailguard import Service, load_service, tune_gc
from tailguard.errors import FeatureError, FeatureVersionMismatch, ModelLoadError, ModelNotFound, SpecError
from tailguard.models.manifest import read_manifest
from tailguard.testing import FakeClock


def load(directory: Path) -> Service:
    return load_service(directory, clock=FakeClock(), freeze_gc=False)


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_feature_versions_are_the_ones_models_pin(service: Service) -> None:
    pinned = service.models["primary"].manifest.feature_versions
    assert {v: service.feature_versions[v] for v in pinned} == pinned


def test_ladder_and_outputs_come_from_the_spec(service: Service) -> None:
    assert (service.engine.rung_names, service.engine.output_names) == (
        ("primary", "fast", "last_good", "default"), ("p",)
    )


def test_edited_transform_source_refuses_the_models_naming_the_view(toy_copy: Path) -> None:
    write_service(toy_copy, module_source=MODULE_SOURCE.replace("Ewma(0.5)", "Ewma(0.25)"))
    with pytest.raises(FeatureVersionMismatch) as info:
        load(toy_copy)
    assert info.value.view in {"stats", "order"}  # both views' transforms live in the edited module


def test_changed_field_default_refuses_the_models_naming_the_view(toy_copy: Path) -> None:
    spec = render_spec().replace("default = -1.0", "default = -2.0")
    write_service(toy_copy, spec_text=spec)
    with pytest.raises(FeatureVersionMismatch) as info:
        load(toy_copy)
    assert info.value.view == "stats"


def test_changed_ttl_keeps_the_models_valid(toy_copy: Path) -> None:
    write_service(toy_copy, spec_text=render_spec(stats_ttl="1m"))
    assert load(toy_copy).engine.predict("a", CTX).rung == "primary"


@pytest.mark.parametrize("artifact", ["model.so", "model.onnx"])
def test_deleted_artifact_fails_at_load(toy_copy: Path, artifact: str) -> None:
    (toy_copy / "models" / "fast" / "1" / artifact).unlink()
    with pytest.raises(ModelLoadError, match=artifact):
        load(toy_copy)


@pytest.mark.parametrize("artifact", ["model.so", "model.onnx"])
def test_flipped_byte_fails_at_load(toy_copy: Path, artifact: str) -> None:
    flip_byte(toy_copy / "models" / "primary" / "1" / artifact)
    with pytest.raises(ModelLoadError, match=artifact):
        load(toy_copy)


def test_edited_manifest_fails_at_load(toy_copy: Path) -> None:
    path = toy_copy / "models" / "primary" / "1" / "manifest.json"
    data = msgspec.json.decode(path.read_bytes())
    data["outputs"] = ["p_up"]
    path.write_bytes(msgspec.json.encode(data))
    with pytest.raises(ModelLoadError, match="content hash"):
        load(toy_copy)


def test_missing_model_directory_fails_at_load(toy_copy: Path) -> None:
    for f in (toy_copy / "models" / "fast" / "1").iterdir():
        if f.is_file():
            f.unlink()
    with pytest.raises(ModelNotFound):
        load(toy_copy)


def test_bad_spec_fails_at_load_naming_the_field(toy_copy: Path) -> None:
    write_service(toy_copy, spec_text=render_spec().replace('budget = "2ms"', 'budget = "2 parsecs"'))
    with pytest.raises(SpecError) as info:
        load(toy_copy)
    assert info.value.path == "$.priorities[1].budget"


def test_default_rung_outputs_must_match_the_models(toy_copy: Path) -> None:
    spec = render_spec().replace("outputs = { p = 0.25 }", "outputs = { q = 0.25 }")
    write_service(toy_copy, spec_text=spec)
    with pytest.raises(SpecError) as info:
        load(toy_copy)
    assert info.value.path == "$.ladder[3].outputs"


def test_onnx_and_compiled_trees_serve_the_same_decisions(toy_dir: Path, toy_copy: Path) -> None:
    write_service(toy_copy, spec_text=render_spec(primary_runtime="onnx", fast_runtime="onnx"))
    trees, onnx = load(toy_dir), load(toy_copy)
    assert onnx.models["primary"].runtime.kind == "onnx"
    keys = ["a", "b", "never-seen"]
    for svc in (trees, onnx):
        svc.stream.apply("item", "a", {"ts_ns": 1, "price": 104.0, "size": 4.0})
        svc.stream.apply("item", "b", {"ts_ns": 1, "price": 96.0, "size": 8.0})
    ctx = {"price": np.array([100.0, 103.0, 107.0]), "size": 3.0}
    np.testing.assert_allclose(
        onnx.engine.predict_batch(keys, ctx).outputs, trees.engine.predict_batch(keys, ctx).outputs, atol=1e-6
    )


def test_a_loaded_engine_starts_with_zeroed_counters(service: Service) -> None:
    stats = service.engine.statistics()
    assert (stats["requests"], stats["batch_rows"], stats["unknown_entities"]) == (0, 0, 0)
    assert {r["answered"] for r in stats["rungs"].values()} == {0}


def test_loading_twice_gives_independent_engines(toy_dir: Path) -> None:
    one, two = load(toy_dir), load(toy_dir)
    one.stream.apply("item", "a", {"ts_ns": 1, "price": 105.0, "size": 4.0})
    assert (one.engine.predict("a", CTX).flags, two.engine.predict("a", CTX).flags) == (0, 1)


def test_content_hash_of_loaded_models_is_the_manifests(service: Service, toy_dir: Path) -> None:
    on_disk = read_manifest(toy_dir / "models" / "primary" / "1").content_hash
    assert service.models["primary"].manifest.content_hash == on_disk


def test_tune_gc_raises_the_young_generation_threshold() -> None:
    before = gc.get_threshold()
    try:
        tune_gc(123_456)
        assert gc.get_threshold()[0] == 123_456
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def test_transform_failing_on_warm_up_fails_the_load_as_feature_error(toy_copy: Path) -> None:
    # Floats raise where numpy arrays give inf: ``size - 1.0`` is 0 for the warm-up context of
    # ones, so this transform would crash the first real request with size 1 — caught at load.
    source = MODULE_SOURCE.replace("size / (price + 1.0)", "price / (size - 1.0)")
    write_service(toy_copy, module_source=source)
    train_models(toy_copy)
    with pytest.raises(FeatureError, match="warm-up") as info:
        load(toy_copy)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_the_stream_section_applies_to_the_embedded_stream_processor(toy_copy: Path) -> None:
    spec = toy_copy / "service.toml"
    spec.write_text(spec.read_text() + '\n[stream]\nevent_id = "id"\non_duplicate = "drop"\n')
    svc = load_service(toy_copy, freeze_gc=False)
    event = {"item": "a", "id": "e1", "ts_ns": 1_000_000, "price": 101.0, "size": 1.0}
    assert svc.stream.process(event) is None
    assert svc.stream.process({**event, "ts_ns": 2_000_000}) is not None  # the same id again
    assert svc.stream.statistics()["duplicate"] == 1


def test_side_tasks_take_turns_going_first_and_wait_once_the_budget_is_spent(service: Service) -> None:
    import time

    calls: list[str] = []

    class Slow:
        """A side task whose every step outlasts a 1 µs budget."""

        def __init__(self, name: str) -> None:
            self.name = name

        def drain(self, budget_ns: int | None = None) -> int:
            calls.append(self.name)
            end = time.perf_counter_ns() + 20_000
            while time.perf_counter_ns() < end:  # a step of 20 µs of work
                pass
            return 1

        def close(self) -> None:
            pass

    service.side_tasks.extend([Slow("a"), Slow("b"), Slow("c")])
    for _ in range(4):
        service.run_side_path(1e-6)
    assert calls == ["a", "b", "c", "a"]  # one task a slice, each first in turn
    calls.clear()
    service.run_side_path(0.5)
    assert sorted(calls) == ["a", "b", "c"]  # a budget that lasts: every task runs
    calls.clear()
    service.run_side_path()
    assert calls == ["a", "b", "c"]  # no budget: everything, in order
