"""In-process hot swap: no failed request, no mixed batch, refusals leave the old version serving."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import msgspec
import numpy as np
import pytest
from registrykit import add_version, write_policy
from toyservice import CTX, PRIMARY_INPUTS, feed, render_spec, write_service

from tailguard import Service, load_service
from tailguard.errors import FeatureVersionMismatch, ModelError, ModelLoadError
from tailguard.models.manifest import read_manifest, write_manifest
from tailguard.registry.owner import OwnerInbox
from tailguard.registry.problems import ModelSignatureError, ModelSwapError
from tailguard.registry.swap import swap_model, synthetic_rows
from tailguard.resilience.isolation import IsolatedRuntime
from tailguard.testing import FakeClock

KEYS = ["a", "b", "unknown"]
BATCH_CTX = {"price": np.array([100.0, 104.5, 108.0]), "size": np.array([1.0, 3.0, 9.0])}
WAIT_S = 30.0


@pytest.fixture
def svc(toy_copy: Path, clock: FakeClock, primary_v2: Path) -> Service:
    """The toy service serving primary/1, with primary/2 added to its repository after load."""
    s = load_service(toy_copy, clock=clock, freeze_gc=False)
    add_version(toy_copy, primary_v2)
    feed(s, "a")
    feed(s, "b", (99.0, 98.0), size=7.0)
    return s


def answers(s: Service) -> tuple[str, float, str, np.ndarray]:
    d = s.engine.predict("a", CTX)
    b = s.engine.predict_batch(KEYS, BATCH_CTX)
    return d.model_version, d.output("p"), b.model_version, b.outputs[:, 0].copy()


def test_swap_switches_every_decision_to_the_new_version(svc: Service) -> None:
    before = answers(svc)
    report = swap_model(svc, "primary", "2", warmup=3)
    after = answers(svc)
    assert (before[0], before[2]) == ("primary/1", "primary/1")
    assert (after[0], after[2]) == ("primary/2", "primary/2")
    assert after[1] != before[1]  # a different model really answers
    assert (report.old_version, report.new_version, report.rungs) == ("1", "2", ("primary",))
    assert report.warmup_inferences == 3 * 3
    assert report.content_hash == read_manifest(svc.directory / "models" / "primary" / "2").content_hash
    assert svc.models["primary"].version == "2"


def test_swap_keeps_rung_counters_and_uses_the_new_estimate(svc: Service) -> None:
    answers(svc)
    swap_model(svc, "primary", "2", warmup=2)
    answers(svc)
    assert svc.engine.statistics()["rungs"]["primary"]["answered"] == 2 * (1 + len(KEYS))
    assert svc.engine.rungs[0].model is svc.models["primary"]


def test_hot_swap_under_a_thread_hammering_predict(svc: Service) -> None:
    v1 = answers(svc)
    inbox = OwnerInbox()
    started, finished = threading.Event(), threading.Event()
    seen: list[tuple[int, tuple[str, float, str, np.ndarray]]] = []
    errors: list[BaseException] = []
    switched_at: list[int] = []
    busy_calls: list[int] = []

    def owner() -> None:
        """The engine's owner: decides continuously, giving the inbox 50 us between decisions."""
        i = 0
        label = svc.engine.rungs[0].label
        try:
            while not (switched_at and i >= switched_at[0] + 50):
                if inbox.run_pending(50_000):
                    busy_calls.append(i)
                if svc.engine.rungs[0].label != label:
                    label = svc.engine.rungs[0].label
                    switched_at.append(i)
                seen.append((i, answers(svc)))
                i += 1
                if i == 50:
                    started.set()
                if i > 1_000_000:
                    raise AssertionError("the switch never arrived")
        except BaseException as exc:
            errors.append(exc)
        finally:
            started.set()
            finished.set()

    t = threading.Thread(target=owner)
    t.start()
    try:
        assert started.wait(WAIT_S)
        report = swap_model(svc, "primary", "2", owner=inbox, timeout_s=WAIT_S, warmup=50)
        assert finished.wait(WAIT_S)
    finally:
        t.join(WAIT_S)
    assert errors == []
    assert len(switched_at) == 1 and switched_at[0] >= 50
    assert report.warmup_inferences == 150
    assert len(busy_calls) >= 2  # the warm-up was spread over several idle slots
    v2 = answers(svc)
    assert v2[0] == "primary/2"
    for i, (one_label, one_p, batch_label, batch_p) in seen:
        expect = v1 if i < switched_at[0] else v2
        assert (one_label, one_p, batch_label) == (expect[0], expect[1], expect[2])
        np.testing.assert_array_equal(batch_p, expect[3])  # never a mix within a batch


def test_switch_through_the_side_path(svc: Service) -> None:
    inbox = OwnerInbox()
    svc.attach(inbox)
    done = threading.Event()
    result: list[object] = []

    def swapper() -> None:
        try:
            result.append(swap_model(svc, "primary", "2", owner=inbox, timeout_s=WAIT_S))
        except BaseException as exc:
            result.append(exc)
        done.set()

    t = threading.Thread(target=swapper)
    t.start()
    while not done.wait(0.001):
        svc.run_side_path()
    t.join(WAIT_S)
    assert answers(svc)[0] == "primary/2"
    assert not isinstance(result[0], BaseException)


def test_owner_that_never_takes_the_switch_changes_nothing(svc: Service) -> None:
    inbox = OwnerInbox()
    with pytest.raises(ModelSwapError, match="did not complete the switch") as err:
        swap_model(svc, "primary", "2", owner=inbox, timeout_s=0.05)
    assert err.value.code == "model_swap_failed"
    assert inbox.run_pending() == 0  # withdrawn: never applied late
    assert answers(svc)[0] == "primary/1"


def assert_still_v1(s: Service) -> None:
    label, _, batch_label, _ = answers(s)
    assert (label, batch_label, s.models["primary"].version) == ("primary/1", "primary/1", "1")


def test_corrupt_artifact_is_refused_and_v1_keeps_serving(svc: Service) -> None:
    so = svc.directory / "models" / "primary" / "2" / "model.so"
    data = bytearray(so.read_bytes())
    data[len(data) // 3] ^= 0xFF
    so.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="corrupt") as err:
        swap_model(svc, "primary", "2")
    assert err.value.code == "model_load_failed"
    assert_still_v1(svc)


def test_feature_version_mismatch_is_refused_and_v1_keeps_serving(svc: Service) -> None:
    d = svc.directory / "models" / "primary" / "2"
    m = read_manifest(d)
    write_manifest(d, msgspec.structs.replace(m, feature_versions={**m.feature_versions, "stats": "0" * 16}))
    with pytest.raises(FeatureVersionMismatch, match="stats") as err:
        swap_model(svc, "primary", "2")
    assert err.value.code == "feature_version_mismatch"
    assert_still_v1(svc)


def test_unsigned_version_is_refused_under_a_signing_policy(svc: Service, mac_key: Path) -> None:
    write_policy(svc.directory, require=True, mac=mac_key)
    with pytest.raises(ModelSignatureError) as err:
        swap_model(svc, "primary", "2")
    assert err.value.code == "model_signature_invalid"
    assert_still_v1(svc)


def test_unknown_model_is_refused(svc: Service) -> None:
    with pytest.raises(ModelSwapError, match="no model 'nope'"):
        swap_model(svc, "nope", "1")
    assert_still_v1(svc)


def test_recorded_rows_of_the_wrong_shape_are_refused(svc: Service) -> None:
    with pytest.raises(ModelLoadError, match="warm-up rows"):
        swap_model(svc, "primary", "2", recorded_rows=np.zeros((4, 2), dtype=np.float32))
    assert_still_v1(svc)


def test_recorded_rows_warm_the_new_version(svc: Service) -> None:
    rows = np.random.default_rng(1).uniform(0.0, 10.0, (16, len(PRIMARY_INPUTS))).astype(np.float32)
    report = swap_model(svc, "primary", "2", recorded_rows=rows, warmup=2)
    assert report.warmup_inferences == 6
    assert answers(svc)[0] == "primary/2"


def test_swap_of_a_rung_with_reordered_inputs(svc: Service) -> None:
    """The fast model reads two columns in another order than the wide vector: the new rung
    must gather them the same way."""
    src = svc.directory / "models" / "fast" / "1"
    d = Path(shutil.copytree(src, svc.directory / "models" / "fast" / "2"))
    write_manifest(d, msgspec.structs.replace(read_manifest(d), version="2"))
    before = svc.engine.predict("b", CTX, start_rung=1)
    swap_model(svc, "fast", "2")
    after = svc.engine.predict("b", CTX, start_rung=1)
    assert (before.model_version, after.model_version) == ("fast/1", "fast/2")
    assert after.output("p") == before.output("p")


def test_swap_on_a_bare_engine_needs_the_service_dir(svc: Service) -> None:
    with pytest.raises(ModelSwapError, match="service_dir"):
        swap_model(svc.engine, "primary", "2")
    swap_model(svc.engine, "primary", "2", service_dir=svc.directory)
    assert answers(svc)[0] == "primary/2"


def test_synthetic_rows_start_from_the_declared_defaults(svc: Service) -> None:
    rows = synthetic_rows(PRIMARY_INPUTS, svc.views, n=8)
    assert rows.shape == (8, 5)
    np.testing.assert_array_equal(rows[0, :3], np.array([0.5, -1.0, 2.0], dtype=np.float32))
    assert not np.array_equal(rows[1], rows[0])


def test_version_answering_other_outputs_is_refused(svc: Service) -> None:
    src = svc.directory / "models" / "fast" / "1"
    d = Path(shutil.copytree(src, svc.directory / "models" / "fast" / "2"))
    write_manifest(d, msgspec.structs.replace(read_manifest(d), version="2", outputs=("q",)))
    with pytest.raises(ModelSwapError, match=r"answers \['q'\]"):
        swap_model(svc, "fast", "2")
    assert svc.engine.predict("b", CTX, start_rung=1).model_version == "fast/1"


def test_engine_refuses_to_put_a_model_on_a_rung_that_is_not_a_model(svc: Service) -> None:
    with pytest.raises(ModelError, match="no model rung named 'default'"):
        svc.engine.replace_model("default", svc.models["primary"])
    assert [r.name for r in svc.engine.rungs] == ["primary", "fast", "last_good", "default"]


def test_swap_of_an_isolated_model_isolates_the_new_version(
    toy_copy: Path, clock: FakeClock, primary_v2: Path
) -> None:
    write_service(toy_copy, spec_text=render_spec(primary_isolation="thread"))
    s = load_service(toy_copy, clock=clock, freeze_gc=False)
    try:
        add_version(toy_copy, primary_v2)
        old = s.models["primary"].runtime
        swap_model(s, "primary", "2")
        assert isinstance(s.models["primary"].runtime, IsolatedRuntime)
        assert s.engine.rungs[0].isolated is s.models["primary"].runtime is not old
        assert s.engine.predict("a", CTX).model_version == "primary/2"
    finally:
        s.engine.close()


def test_short_gil_slices_while_loading_then_restored() -> None:
    import sys
    import threading

    from tailguard.registry.swap import short_gil_slices

    before = sys.getswitchinterval()
    inside = threading.Event()
    leave = threading.Event()
    seen: list[float] = []

    def other_loader() -> None:
        with short_gil_slices(2e-4):
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=other_loader)
    with short_gil_slices(1e-4):
        seen.append(sys.getswitchinterval())
        t.start()
        assert inside.wait(10)
    seen.append(sys.getswitchinterval())  # the other load still runs: still short
    leave.set()
    t.join(10)
    assert seen[0] == pytest.approx(1e-4) and seen[1] < before
    assert sys.getswitchinterval() == before
