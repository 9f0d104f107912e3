"""The service spec: parsing, field-path errors, cross references and durations."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tailguard.errors import SpecError
from tailguard.spec import Duration, RungKind, ViewSource, load_spec, parse_spec

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "trading"

SECONDS_PER_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

MINIMAL: dict[str, Any] = {
    "name": "svc",
    "entities": [{"name": "user"}],
    "feature_views": [
        {"name": "profile", "entity": "user", "fields": [{"name": "age"}, {"name": "score"}], "ttl": "1s"},
        {"name": "req", "source": "request", "inputs": ["x"], "fields": [{"name": "x"}]},
    ],
    "models": [{"name": "m", "repository": "models"}, {"name": "m_fast", "repository": "models"}],
    "ladder": [
        {"name": "primary", "kind": "model", "model": "m"},
        {"name": "fast", "kind": "model", "model": "m_fast"},
        {"name": "last_good", "kind": "last_good", "max_age": "2s"},
        {"name": "default", "kind": "default", "outputs": {"y": 0.5}},
    ],
}


def spec_dict() -> dict[str, Any]:
    return copy.deepcopy(MINIMAL)


def spec_error(data: dict[str, Any]) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return info.value


# -- parsing ---------------------------------------------------------------------------------
def test_minimal_spec_parses_into_typed_structs() -> None:
    spec = parse_spec(spec_dict())
    assert spec.feature_views[1].source is ViewSource.REQUEST
    assert spec.ladder[2].kind is RungKind.LAST_GOOD


def test_durations_in_the_spec_become_float_seconds() -> None:
    spec = parse_spec(spec_dict())
    assert isinstance(spec.view("profile").ttl, Duration)
    assert spec.view("profile").ttl == 1.0
    assert spec.ladder[2].max_age == 2.0


def test_a_number_is_a_duration_in_seconds() -> None:
    data = spec_dict()
    data["feature_views"][0]["ttl"] = 30
    assert parse_spec(data).view("profile").ttl == 30.0


def test_default_priority_classes_are_declared_when_none_are_given() -> None:
    spec = parse_spec(spec_dict())
    assert {p.name for p in spec.priorities} == {"critical", "normal", "bulk"}
    assert spec.priority(spec.default_priority).name == "normal"


def test_the_trading_example_spec_loads() -> None:
    spec = load_spec(EXAMPLE)
    assert spec.name == "trading"
    assert [r.kind for r in spec.ladder][-1] is RungKind.DEFAULT


def test_load_spec_accepts_the_file_or_its_directory(tmp_path: Path) -> None:
    (tmp_path / "service.toml").write_text('name = "a"\nmodels = [{name = "m", repository = "r"}]\n'
                                           'ladder = [{name = "p", kind = "model", model = "m"}]\n')
    assert load_spec(tmp_path) == load_spec(tmp_path / "service.toml")


def test_missing_spec_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no service spec"):
        load_spec(tmp_path)


def test_invalid_toml_is_a_spec_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "service.toml"
    path.write_text("name = [unclosed\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.source == str(path)


def test_spec_errors_from_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "service.toml"
    path.write_text('name = "a"\nbogus = 1\nmodels = []\nladder = []\n')
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(str(path))


# -- field paths -----------------------------------------------------------------------------
def test_unknown_top_level_field_is_rejected_and_named() -> None:
    data = spec_dict()
    data["bogus"] = 1
    err = spec_error(data)
    assert err.path == "$"
    assert "bogus" in str(err)


def test_unknown_nested_field_names_the_object_that_holds_it() -> None:
    data = spec_dict()
    data["models"][1]["threads"] = 4
    err = spec_error(data)
    assert err.path == "$.models[1]"
    assert "threads" in str(err)


def test_bad_dtype_names_the_field_path() -> None:
    data = spec_dict()
    data["feature_views"][0]["fields"][1]["dtype"] = "float16"
    assert spec_error(data).path == "$.feature_views[0].fields[1].dtype"


@pytest.mark.parametrize("bad", ["5 parsecs", "10", "-1s", "1.5.2ms", True, [1]])
def test_bad_duration_names_the_field_path(bad: object) -> None:
    data = spec_dict()
    data["feature_views"][0]["ttl"] = bad
    assert spec_error(data).path == "$.feature_views[0].ttl"


def test_negative_numeric_duration_is_rejected() -> None:
    data = spec_dict()
    data["ladder"][2]["max_age"] = -0.5
    assert spec_error(data).path == "$.ladder[2].max_age"


def test_bad_name_pattern_names_the_field_path() -> None:
    data = spec_dict()
    data["feature_views"][0]["fields"][0]["name"] = "has space"
    assert spec_error(data).path == "$.feature_views[0].fields[0].name"


def test_missing_required_field_is_a_spec_error() -> None:
    data = spec_dict()
    del data["models"]
    assert "models" in str(spec_error(data))


def test_unknown_entity_reference_names_the_view() -> None:
    data = spec_dict()
    data["feature_views"][0]["entity"] = "account"
    err = spec_error(data)
    assert err.path == "$.feature_views[0].entity"
    assert "account" in str(err)


def test_stored_view_without_entity_is_rejected() -> None:
    data = spec_dict()
    del data["feature_views"][0]["entity"]
    assert spec_error(data).path == "$.feature_views[0].entity"


def test_view_without_fields_is_rejected() -> None:
    data = spec_dict()
    data["feature_views"][0]["fields"] = []
    assert spec_error(data).path == "$.feature_views[0].fields"


def test_request_view_needs_a_transform_or_inputs() -> None:
    data = spec_dict()
    data["feature_views"][1]["inputs"] = []
    assert spec_error(data).path == "$.feature_views[1].transform"


def test_transform_reference_needs_module_and_attribute() -> None:
    data = spec_dict()
    data["feature_views"][0]["transform"] = "features.Ticks"
    assert spec_error(data).path == "$.feature_views[0].transform"


@pytest.mark.parametrize(
    ("section", "position", "duplicate", "path"),
    [
        ("entities", 1, {"name": "user"}, "$.entities[1].name"),
        ("feature_views", 2, {"name": "req", "source": "request", "inputs": ["x"], "fields": [{"name": "x"}]},
         "$.feature_views[2].name"),
        ("models", 2, {"name": "m", "repository": "elsewhere"}, "$.models[2].name"),
        ("ladder", 1, {"name": "primary", "kind": "model", "model": "m_fast"}, "$.ladder[1].name"),
    ],
)
def test_duplicate_names_name_the_second_occurrence(
    section: str, position: int, duplicate: dict[str, Any], path: str
) -> None:
    data = spec_dict()
    data[section].insert(position, duplicate)
    assert spec_error(data).path == path


def test_ladder_model_not_declared_names_the_rung() -> None:
    data = spec_dict()
    data["ladder"][1]["model"] = "m_turbo"
    err = spec_error(data)
    assert err.path == "$.ladder[1].model"
    assert "m_turbo" in str(err)


def test_model_rung_without_model_is_rejected() -> None:
    data = spec_dict()
    del data["ladder"][1]["model"]
    assert spec_error(data).path == "$.ladder[1].model"


def test_only_model_rungs_name_a_model() -> None:
    data = spec_dict()
    data["ladder"][2]["model"] = "m"
    assert spec_error(data).path == "$.ladder[2].model"


def test_default_rung_not_last_is_rejected() -> None:
    data = spec_dict()
    data["ladder"][2], data["ladder"][3] = data["ladder"][3], data["ladder"][2]
    assert spec_error(data).path == "$.ladder[2].kind"


def test_default_rung_must_declare_outputs() -> None:
    data = spec_dict()
    del data["ladder"][3]["outputs"]
    assert spec_error(data).path == "$.ladder[3].outputs"


def test_first_rung_must_be_a_model() -> None:
    data = spec_dict()
    data["ladder"] = data["ladder"][2:]
    assert spec_error(data).path == "$.ladder[0].kind"


def test_empty_ladder_is_rejected() -> None:
    data = spec_dict()
    data["ladder"] = []
    assert spec_error(data).path == "$.ladder"


def test_pinned_version_policy_needs_a_version() -> None:
    data = spec_dict()
    data["models"][0]["version_policy"] = "pinned"
    assert spec_error(data).path == "$.models[0].version"


def test_unknown_default_priority_is_rejected() -> None:
    data = spec_dict()
    data["default_priority"] = "urgent"
    assert spec_error(data).path == "$.default_priority"


def test_priority_levels_must_be_distinct() -> None:
    data = spec_dict()
    data["priorities"] = [
        {"name": "normal", "level": 1, "budget": "1ms"},
        {"name": "bulk", "level": 1, "budget": "5ms"},
    ]
    assert spec_error(data).path == "$.priorities"


def test_priority_level_out_of_range_names_the_field() -> None:
    data = spec_dict()
    data["priorities"] = [{"name": "normal", "level": 0, "budget": "1ms"}]
    assert spec_error(data).path == "$.priorities[0].level"


# -- durations -------------------------------------------------------------------------------
@given(
    value=st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False),
    unit=st.sampled_from(sorted(SECONDS_PER_UNIT)),
)
def test_duration_parses_every_unit(value: float, unit: str) -> None:
    parsed = Duration.parse(f"{value!r}{unit}")
    assert math.isclose(parsed, value * SECONDS_PER_UNIT[unit], rel_tol=1e-12, abs_tol=0.0)


@given(seconds=st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_duration_round_trips_through_seconds_text(seconds: float) -> None:
    assert Duration.parse(f"{seconds!r}s") == seconds


@given(
    whole=st.integers(min_value=0, max_value=10**6),
    unit=st.sampled_from(["us", "ms", "s", "m"]),
)
def test_duration_units_are_consistent_with_each_other(whole: int, unit: str) -> None:
    smaller = {"us": "ns", "ms": "us", "s": "ms", "m": "s"}[unit]
    factor = 60 if unit == "m" else 1000
    assert math.isclose(
        Duration.parse(f"{whole}{unit}"), Duration.parse(f"{whole * factor}{smaller}"), rel_tol=1e-12
    )


@given(seconds=st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_duration_accepts_a_number_of_seconds(seconds: float) -> None:
    assert Duration.parse(seconds) == seconds


@pytest.mark.parametrize(
    ("text", "seconds"), [(" 2ms", 2e-3), ("2ms ", 2e-3), ("2 ms", 2e-3), (".5s", 0.5), ("1e3us", 1e-3)]
)
def test_duration_tolerates_spaces_leading_dot_and_exponent(text: str, seconds: float) -> None:
    assert math.isclose(Duration.parse(text), seconds, rel_tol=1e-12)


@pytest.mark.parametrize("bad", ["2", "2 parsecs", "ms", "-2ms", "2msx", ""])
def test_duration_rejects_malformed_text(bad: str) -> None:
    with pytest.raises(ValueError):
        Duration.parse(bad)


@pytest.mark.parametrize("bad", [True, None, [1]])
def test_duration_rejects_non_numbers(bad: object) -> None:
    with pytest.raises(TypeError):
        Duration.parse(bad)


def test_duration_rejects_negative_numbers() -> None:
    with pytest.raises(ValueError):
        Duration.parse(-1.0)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), "1e400s"])
def test_duration_rejects_non_finite_values(bad: object) -> None:
    with pytest.raises(ValueError):
        Duration.parse(bad)


def test_model_isolation_must_be_a_known_mode() -> None:
    data = spec_dict()
    data["models"][0]["isolation"] = "process"
    assert spec_error(data).path == "$.models[0].isolation"


# -- serving ---------------------------------------------------------------------------------------
def test_serving_table_parses_with_durations_and_rate_limit() -> None:
    d = spec_dict()
    d["serving"] = {"max_batch_size": 32, "max_queue_delay": "100us", "starvation_guard": "2ms",
                    "rate_limit": {"rate": 500.0, "burst": 20}}
    s = parse_spec(d).serving
    assert (s.max_batch_size, s.max_queue_delay, s.starvation_guard) == (32, pytest.approx(100e-6), 2e-3)
    assert s.rate_limit is not None and (s.rate_limit.rate, s.rate_limit.burst) == (500.0, 20)


def test_serving_defaults_apply_without_the_table() -> None:
    s = parse_spec(spec_dict()).serving
    assert (s.max_batch_size, s.max_queue_delay, s.rate_limit) == (64, 0.0, None)


def test_a_priority_class_declares_its_queue_policy() -> None:
    d = spec_dict()
    d["priorities"] = [
        {"name": "hi", "level": 1, "budget": "1ms", "max_queue_size": 8, "on_timeout": "reject"},
        {"name": "normal", "level": 2, "budget": "5ms"},
    ]
    hi, normal = parse_spec(d).priorities
    assert (hi.max_queue_size, hi.on_timeout.value, normal.on_timeout.value) == (8, "reject", "degrade")


def test_an_unknown_on_timeout_policy_names_its_path() -> None:
    d = spec_dict()
    d["priorities"] = [{"name": "normal", "level": 1, "budget": "1ms", "on_timeout": "drop"}]
    assert spec_error(d).path == "$.priorities[0].on_timeout"


def test_a_zero_max_batch_size_is_rejected() -> None:
    d = spec_dict()
    d["serving"] = {"max_batch_size": 0}
    assert spec_error(d).path == "$.serving.max_batch_size"


# -- consistency classes and [online] ---------------------------------------------------------
def test_views_are_strict_and_the_store_embedded_by_default() -> None:
    spec = parse_spec(spec_dict())
    assert (spec.view("profile").consistency, spec.view("profile").max_staleness) == ("strict", None)
    assert spec.online.backend == "memory"


def test_an_eventual_view_parses_its_staleness_bound() -> None:
    data = spec_dict()
    data["feature_views"][0].update(consistency="eventual", max_staleness="500ms")
    v = parse_spec(data).view("profile")
    assert (v.consistency, v.max_staleness) == ("eventual", 0.5)


@pytest.mark.parametrize("bound", [None, "0s"])
def test_an_eventual_view_needs_a_positive_staleness_bound(bound: str | None) -> None:
    data = spec_dict()
    data["feature_views"][0]["consistency"] = "eventual"
    if bound is not None:
        data["feature_views"][0]["max_staleness"] = bound
    err = spec_error(data)
    assert err.path == "$.feature_views[0].max_staleness" and "positive max_staleness" in str(err)


def test_a_strict_view_takes_no_staleness_bound() -> None:
    data = spec_dict()
    data["feature_views"][0]["max_staleness"] = "1s"
    err = spec_error(data)
    assert err.path == "$.feature_views[0].max_staleness" and "eventual" in str(err)


def test_a_request_view_has_no_consistency_class() -> None:
    data = spec_dict()
    data["feature_views"][1].update(consistency="eventual", max_staleness="1s")
    assert spec_error(data).path == "$.feature_views[1].consistency"


def test_an_unknown_consistency_class_names_its_path() -> None:
    data = spec_dict()
    data["feature_views"][0]["consistency"] = "sometimes"
    assert spec_error(data).path == "$.feature_views[0].consistency"


def test_the_online_table_parses_with_durations() -> None:
    data = spec_dict()
    data["online"] = {"backend": "redis", "url": "redis://10.0.0.5:6380/2", "invalidation": "pubsub",
                      "timeout": "2ms", "cache_capacity": 5000, "cache_entry_ttl": "30s",
                      "keyspace": "shared"}
    o = parse_spec(data).online
    assert (o.backend, o.url, o.invalidation, o.timeout, o.cache_capacity, o.cache_entry_ttl, o.keyspace) == (
        "redis", "redis://10.0.0.5:6380/2", "pubsub", 0.002, 5000, 30.0, "shared")


@pytest.mark.parametrize(("key", "value", "path"), [
    ("backend", "cassandra", "$.online.backend"),
    ("invalidation", "polling", "$.online.invalidation"),
    ("url", "http://localhost:6379", "$.online.url"),
    ("timeout", "0s", "$.online.timeout"),
    ("heartbeat", "0ms", "$.online.heartbeat"),
    ("cache_capacity", 0, "$.online.cache_capacity"),
    ("keyspace", "has space", "$.online.keyspace"),
    ("colour", "blue", "$.online"),  # unknown fields name the object that holds them
])
def test_bad_online_values_name_their_path(key: str, value: object, path: str) -> None:
    data = spec_dict()
    data["online"] = {"backend": "redis", key: value}
    assert spec_error(data).path == path


def test_a_redis_backed_ladder_must_end_below_the_models() -> None:
    data = spec_dict()
    data["ladder"] = data["ladder"][:2]
    data["online"] = {"backend": "redis"}
    err = spec_error(data)
    assert err.path == "$.ladder[1].kind" and "last_good or default" in str(err)
    data["online"] = {"backend": "memory"}
    parse_spec(data)  # the embedded store cannot be unreachable: no such rule
