"""Point-in-time training sets: each label row joined with every view's value *as known* then.

For a label row (entity key, label time ``t``) and a view, the value joined is the row of the
pinned view version with the latest event time among rows with ``event_ns <= t`` **and**
``known_ns <= t`` (ties: the one known last, i.e. the latest correction).  A value
backfilled at ``t3`` for an event at ``t1`` is therefore invisible to a label at ``t2``
(``t1 < t2 < t3``) and visible to one at ``t4 > t3``.

DuckDB's ASOF join takes one inequality, so the two conditions are folded into one: a row
is usable from ``eff = max(event_ns, known_ns)`` on (both conditions hold exactly when
``eff <= t``).  Per key, in ``eff`` order, a window keeps the running best row so far (max
event time, then max known time); the ASOF join then picks, per label, the last ``eff <= t``
and reads its running best.  Labels with no usable value get the view's declared defaults
(what serving returns for an unknown entity), or nulls with ``fill="null"``.

Only the pinned version of each view is read: pins come from a model manifest (its
``feature_versions``), from ``versions``, or — when the history holds a single version of a
view — from the history itself; several versions and no pin is an error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tailguard.errors import FeatureError
from tailguard.features.history.layout import day_of, stored_versions, value_files
from tailguard.features.history.optional import duckdb, pyarrow, pyarrow_parquet, to_arrow
from tailguard.features.history.versions import list_versions, load_descriptor

__all__ = ["manifest_versions", "resolve_versions", "training_set"]

_SQL_TYPES = {
    "float32": "FLOAT", "float64": "DOUBLE", "int32": "INTEGER", "int64": "BIGINT", "bool": "BOOLEAN",
}


def manifest_versions(path: str | Path) -> dict[str, str]:
    """The feature versions a model manifest pins (``manifest.json`` or its folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.json"
    try:
        pins = json.loads(p.read_text())["feature_versions"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FeatureError(f"{p}: not a model manifest with feature_versions ({exc})") from exc
    return {str(k): str(v) for k, v in pins.items()}


def _history_versions(root: Path, view: str) -> list[str]:
    return sorted(set(stored_versions(root, view)) | set(list_versions(root, view)))


def resolve_versions(
    root: str | Path,
    views: Sequence[str],
    versions: Mapping[str, str] | None = None,
    manifest: str | Path | None = None,
) -> dict[str, str]:
    """The version of each view to join: ``versions`` over the manifest's pins over the
    history's only version (FeatureError when a view has several and no pin)."""
    pins = manifest_versions(manifest) if manifest is not None else {}
    pins.update(versions or {})
    out: dict[str, str] = {}
    for view in views:
        if view in pins:
            out[view] = pins[view]
            continue
        found = _history_versions(Path(root), view)
        if len(found) != 1:
            raise FeatureError(
                f"view {view!r} has {len(found)} versions in {root} ({', '.join(found) or 'none'}): "
                "pin one with a model manifest or versions={view: version}"
            )
        out[view] = found[0]
    return out


def _labels_table(labels: Any) -> Any:
    pa = pyarrow()
    if isinstance(labels, str | Path):
        return pyarrow_parquet().read_table(labels)
    if isinstance(labels, pa.Table):
        return labels
    if isinstance(labels, Mapping):
        return pa.table(dict(labels))
    raise FeatureError(f"labels must be a pyarrow Table, a mapping of columns or a Parquet path, "
                       f"not {type(labels).__name__}")


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _files_sql(files: Sequence[Path]) -> str:
    return "[" + ", ".join("'" + str(f).replace("'", "''") + "'" for f in files) + "]"


def _snapshot_sql(files: Sequence[Path], fields: Sequence[str]) -> str:
    """Per key and ``eff``: the best row (max event, then known time) usable from ``eff`` on."""
    packed = ", ".join([*(f"{_q(f)} := {_q(f)}" for f in fields), "__event_ns := event_ns",
                        "__known_ns := known_ns"])
    return (
        "SELECT key, eff, any_value(best) AS best FROM ("
        " SELECT key, greatest(known_ns, event_ns) AS eff,"
        f" arg_max(struct_pack({packed}), struct_pack(e := event_ns, k := known_ns)) OVER ("
        "  PARTITION BY key ORDER BY greatest(known_ns, event_ns)"
        "  RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS best"
        f" FROM read_parquet({_files_sql(files)})"
        ") GROUP BY key, eff"
    )


def training_set(
    history_dir: str | Path,
    labels: Any,
    views: Sequence[str],
    *,
    versions: Mapping[str, str] | None = None,
    manifest: str | Path | None = None,
    keys: Mapping[str, str] | None = None,
    time_column: str = "ts_ns",
    fill: Literal["default", "null"] = "default",
    with_times: bool = False,
    out: str | Path | None = None,
) -> Any:
    """Label rows joined point-in-time with ``views`` (see the module doc); a ``pyarrow.Table``.

    ``labels``: a table (pyarrow, mapping of columns or Parquet path) with ``time_column``
    (int ns since the epoch, the label time) and, per entity of the views, a key column named
    after the entity (or as ``keys`` maps it).  Output: the label columns in input order,
    then ``view.field`` per field in the declared dtypes (and ``view.__event_ns`` /
    ``view.__known_ns`` of the joined row with ``with_times``).  ``out``: also write it to
    this Parquet file."""
    pa = pyarrow()
    if not views:
        raise FeatureError("a training set needs at least one view")
    root = Path(history_dir)
    table = _labels_table(labels)
    if time_column not in table.column_names:
        raise FeatureError(f"labels have no time column {time_column!r} (columns: {table.column_names})")
    t = table.column(time_column)
    if pa.types.is_timestamp(t.type):
        t = t.cast(pa.timestamp("ns")).cast(pa.int64())
    ts = t.cast(pa.int64()).to_numpy(zero_copy_only=False)
    table = table.append_column("__row", pa.array(np.arange(len(table), dtype=np.int64)))
    table = table.append_column("__t", pa.array(ts, type=pa.int64()))
    last_day = day_of(int(ts.max())) if len(ts) else None
    pins = resolve_versions(root, views, versions, manifest)
    ctes: list[str] = []
    joins: list[str] = []
    inner: list[str] = []  # the joined best row of each view, as a struct column __b<i>
    outer: list[str] = []  # the output columns view.field
    for i, view in enumerate(views):
        desc = load_descriptor(root, view, pins[view])
        schema = desc["schema"]
        entity = schema["entity"]
        key_col = (keys or {}).get(entity, entity)
        if key_col not in table.column_names:
            raise FeatureError(
                f"labels have no key column {key_col!r} for entity {entity!r} of view {view!r}"
            )
        fields = schema["fields"]
        # Partition pruning: a label at day D never needs rows of later event days.
        files = [f for f in value_files(root, view, pins[view])
                 if last_day is not None and f.parent.name.removeprefix("dt=") <= last_day]
        b = f"__b{i}"
        if files:
            ctes.append(f"__s{i} AS ({_snapshot_sql(files, [f['name'] for f in fields])})")
            joins.append(f"ASOF LEFT JOIN __s{i} ON l.{_q(key_col)} = __s{i}.key AND l.__t >= __s{i}.eff")
            inner.append(f"__s{i}.best AS {b}")
        for f in fields:
            sql_type = _SQL_TYPES[f["dtype"]]
            value = f"{b}.{_q(f['name'])}" if files else "NULL"
            if fill == "default":
                value = f"coalesce({value}, CAST(CAST('{f['default']}' AS DOUBLE) AS {sql_type}))"
            outer.append(f"CAST({value} AS {sql_type}) AS {_q(view + '.' + f['name'])}")
        if with_times:
            for t_name in ("__event_ns", "__known_ns"):
                value = f"{b}.{t_name}" if files else "NULL"
                outer.append(f"CAST({value} AS BIGINT) AS {_q(view + '.' + t_name)}")
    hidden = "".join(f", {c.rsplit(' AS ', 1)[1]}" for c in inner)
    with_sql = ("WITH " + ", ".join(ctes) + " ") if ctes else ""
    sql = (
        f"{with_sql}SELECT * EXCLUDE (__row, __t{hidden}), {', '.join(outer)} FROM ("
        f"SELECT l.*{''.join(', ' + c for c in inner)} FROM __labels l {' '.join(joins)}"
        ") ORDER BY __row"
    )
    con = duckdb().connect()
    try:
        con.register("__labels", table)
        result = to_arrow(con, sql)
    except duckdb().Error as exc:
        raise FeatureError(f"training set query failed: {exc}") from exc
    finally:
        con.close()
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        pyarrow_parquet().write_table(result, out)
    return result
