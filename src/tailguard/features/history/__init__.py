"""Bitemporal feature history: Parquet logs, point-in-time training sets, replay, version diffs.

* ``HistoryWriter`` (writer.py) tees every online write and event into Parquet, partitioned
  by event date, each row with its event time and the time it became known.
* ``training_set`` (training.py) joins label rows with view values *as known at* the label
  time (DuckDB ASOF joins), reading only the pinned view versions.
* ``materialize`` / ``backfill`` (materialize.py) replay historical events through the same
  ``StreamProcessor`` and transforms as the online path.
* ``describe`` / ``diff_descriptors`` (versions.py) keep and compare what each view version
  was computed from.

pyarrow and duckdb are optional (``pip install 'tailguard[history]'``): they are imported on
first use, and a missing one raises ``FeatureError`` with that hint.
"""

from __future__ import annotations

from tailguard.features.history.materialize import backfill, load_views, materialize, read_events
from tailguard.features.history.training import manifest_versions, resolve_versions, training_set
from tailguard.features.history.versions import (
    describe,
    diff_descriptors,
    list_versions,
    load_descriptor,
    save_descriptor,
)
from tailguard.features.history.writer import HistoryWriter

__all__ = [
    "HistoryWriter",
    "backfill",
    "describe",
    "diff_descriptors",
    "list_versions",
    "load_descriptor",
    "load_views",
    "manifest_versions",
    "materialize",
    "read_events",
    "resolve_versions",
    "save_descriptor",
    "training_set",
]
