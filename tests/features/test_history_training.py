"""Point-in-time training sets: each label sees a view's value only as it was known then."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pa = pytest.importorskip("pyarrow", reason="the history extra (pyarrow) is not installed")
pytest.importorskip("duckdb", reason="the history extra (duckdb) is not installed")
pq = pytest.importorskip("pyarrow.parquet")

from tailguard.errors import FeatureError  # noqa: E402
from tailguard.features.history import HistoryWriter, training_set  # noqa: E402
from tailguard.features.view import FeatureView, compile_views  # noqa: E402
from tailguard.spec import FeatureViewSpec, FieldSpec  # noqa: E402

S = 1_000_000_000
T0 = 1_700_000_000 * S
SPEC = FeatureViewSpec(name="score", entity="user", fields=(FieldSpec(name="x", default=-1.0),))
# Same name, another default: another version of the view.
SPEC_V2 = FeatureViewSpec(name="score", entity="user", fields=(FieldSpec(name="x", default=-2.0),))


@pytest.fixture
def view() -> FeatureView:
    return compile_views((SPEC,))["score"]


def put(root: Path, view: FeatureView, key: str, value: float, event_ns: int, known_ns: int) -> None:
    """One value row of ``view``, known at ``known_ns`` (a writer per known time, as a backfill)."""
    w = HistoryWriter(root, {view.name: view}, known=known_ns)
    w.write(view.name, key, [value], event_ns=event_ns)
    w.flush()


def at(root: Path, key: str, *times: int, **kwargs: object) -> list[float | None]:
    labels = {"user": [key] * len(times), "ts_ns": list(times)}
    return training_set(root, labels, ["score"], **kwargs).column("score.x").to_pylist()  # type: ignore[arg-type]


def test_a_backfilled_value_is_invisible_before_it_was_known_and_visible_after(
    tmp_path: Path, view: FeatureView
) -> None:
    t1, t2, t3, t4 = T0 + 1 * S, T0 + 2 * S, T0 + 3 * S, T0 + 4 * S
    put(tmp_path, view, "ann", 7.0, event_ns=t1, known_ns=t3)  # event at t1, backfilled at t3
    assert at(tmp_path, "ann", t2, t4) == [-1.0, 7.0]


def test_a_label_before_any_value_gets_the_declared_default(tmp_path: Path, view: FeatureView) -> None:
    put(tmp_path, view, "ann", 7.0, event_ns=T0 + S, known_ns=T0 + S)
    assert at(tmp_path, "ann", T0, T0 + S) == [-1.0, 7.0]


def test_fill_null_leaves_unknown_values_null(tmp_path: Path, view: FeatureView) -> None:
    put(tmp_path, view, "ann", 7.0, event_ns=T0 + S, known_ns=T0 + S)
    assert at(tmp_path, "ann", T0, fill="null") == [None]


def test_the_latest_event_wins_not_the_latest_known(tmp_path: Path, view: FeatureView) -> None:
    put(tmp_path, view, "ann", 5.0, event_ns=T0 + 5 * S, known_ns=T0 + 5 * S)
    put(tmp_path, view, "ann", 1.0, event_ns=T0 + 1 * S, known_ns=T0 + 8 * S)  # late backfill of an old event
    assert at(tmp_path, "ann", T0 + 6 * S, T0 + 9 * S) == [5.0, 5.0]


def test_a_correction_of_the_same_event_counts_from_when_it_was_known(
    tmp_path: Path, view: FeatureView
) -> None:
    put(tmp_path, view, "ann", 1.0, event_ns=T0 + S, known_ns=T0 + S)
    put(tmp_path, view, "ann", 2.0, event_ns=T0 + S, known_ns=T0 + 5 * S)  # the corrected value
    assert at(tmp_path, "ann", T0 + 2 * S, T0 + 5 * S) == [1.0, 2.0]


def test_a_value_known_before_its_event_time_waits_for_the_event_time(
    tmp_path: Path, view: FeatureView
) -> None:
    put(tmp_path, view, "ann", 3.0, event_ns=T0 + 5 * S, known_ns=T0)  # a future-dated event
    assert at(tmp_path, "ann", T0 + S, T0 + 5 * S) == [-1.0, 3.0]


def test_entities_do_not_see_each_others_values(tmp_path: Path, view: FeatureView) -> None:
    put(tmp_path, view, "ann", 1.0, event_ns=T0, known_ns=T0)
    assert at(tmp_path, "bob", T0 + S) == [-1.0]


def test_label_rows_keep_their_order_and_columns(tmp_path: Path, view: FeatureView) -> None:
    put(tmp_path, view, "ann", 1.0, event_ns=T0, known_ns=T0)
    put(tmp_path, view, "bob", 2.0, event_ns=T0, known_ns=T0)
    labels = {"who": ["bob", "ann", "bob"], "ts_ns": [T0 + S] * 3, "y": [1, 0, 1]}
    t = training_set(tmp_path, labels, ["score"], keys={"user": "who"}, with_times=True)
    assert t.column_names == ["who", "ts_ns", "y", "score.x", "score.__event_ns", "score.__known_ns"]
    assert t.column("score.x").to_pylist() == [2.0, 1.0, 2.0]
    assert t.schema.field("score.x").type == pa.float32()


def test_several_versions_need_a_pin(tmp_path: Path, view: FeatureView) -> None:
    v2 = compile_views((SPEC_V2,))["score"]
    put(tmp_path, view, "ann", 1.0, event_ns=T0, known_ns=T0)
    put(tmp_path, v2, "ann", 2.0, event_ns=T0, known_ns=T0)
    with pytest.raises(FeatureError, match="has 2 versions"):
        at(tmp_path, "ann", T0 + S)


def test_only_the_version_the_manifest_pins_is_joined(tmp_path: Path, view: FeatureView) -> None:
    v2 = compile_views((SPEC_V2,))["score"]
    put(tmp_path, view, "ann", 1.0, event_ns=T0, known_ns=T0)
    put(tmp_path, v2, "ann", 2.0, event_ns=T0, known_ns=T0)
    manifest = tmp_path / "model" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"feature_versions": {"score": v2.version}}))
    assert at(tmp_path, "ann", T0 + S, manifest=manifest.parent) == [2.0]
    assert at(tmp_path, "ann", T0 + S, versions={"score": view.version}) == [1.0]


def test_a_pinned_version_without_values_gives_its_defaults(tmp_path: Path, view: FeatureView) -> None:
    v2 = compile_views((SPEC_V2,))["score"]
    put(tmp_path, view, "ann", 1.0, event_ns=T0, known_ns=T0)
    HistoryWriter(tmp_path, {"score": v2})  # described, never written
    assert at(tmp_path, "ann", T0 + S, versions={"score": v2.version}) == [-2.0]


def test_the_training_set_is_written_to_parquet(tmp_path: Path, view: FeatureView) -> None:
    put(tmp_path, view, "ann", 1.0, event_ns=T0, known_ns=T0)
    out = tmp_path / "out" / "train.parquet"
    training_set(tmp_path, {"user": ["ann"], "ts_ns": [T0]}, ["score"], out=out)
    assert pq.read_table(out).column("score.x").to_pylist() == [1.0]


def test_labels_without_the_entity_key_column_are_refused(tmp_path: Path, view: FeatureView) -> None:
    put(tmp_path, view, "ann", 1.0, event_ns=T0, known_ns=T0)
    with pytest.raises(FeatureError, match="no key column 'user'"):
        training_set(tmp_path, {"ts_ns": [T0]}, ["score"])


# (key, event time, known time) in seconds after T0; known may precede event (a future-dated event).
rows_st = st.lists(
    st.tuples(st.sampled_from("ab"), st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=30
)
labels_st = st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 25)), min_size=1, max_size=20)


@settings(max_examples=40)
@given(rows=rows_st, labels=labels_st)
def test_each_label_gets_the_latest_event_known_by_then(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[str, int, int]],
    labels: list[tuple[str, int]],
) -> None:
    """Against brute force: among rows with event <= t and known <= t, the max (event, known)."""
    root = tmp_path_factory.mktemp("h")
    view = compile_views((SPEC,))["score"]
    for known in sorted({k for _, _, k in rows}):
        w = HistoryWriter(root, {"score": view}, known=T0 + known)
        for key, event, k in rows:
            if k == known:
                w.write("score", key, [event * 100 + k], event_ns=T0 + event)  # value names its row
        w.flush()
    got = training_set(root, {"user": [k for k, _ in labels], "ts_ns": [T0 + t for _, t in labels]},
                       ["score"]).column("score.x").to_pylist()
    want = []
    for key, t in labels:
        seen = [(e, k) for kk, e, k in rows if kk == key and e <= t and k <= t]
        want.append(float(max(seen)[0] * 100 + max(seen)[1]) if seen else -1.0)
    assert got == want
