"""Where the history lives on disk, and how a file gets there whole.

::

    HISTORY/
      values/view=<view>/version=<version>/dt=YYYY-MM-DD/part-<known_ns>-<writer>-<seq>.parquet
      events/dt=YYYY-MM-DD/part-<known_ns>-<writer>-<seq>.parquet
      versions/<view>/<version>.json        one descriptor per view version (see versions.py)

Partitions are hive-style and by the **event** date (UTC), so a point-in-time join for labels
up to some day reads only that day and earlier.  A value row holds the entity ``key``,
``event_ns`` (its event time), ``known_ns`` (when the system learnt it: the write's wall-clock
time, or a backfill's run time) and one column per field in the declared dtype.  Files are
written under a dot-name and renamed, so a reader never sees half a file; file names sort by
the writer's first known time.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.features.history.optional import pyarrow_parquet

__all__ = [
    "NS_PER_DAY",
    "day_of",
    "days_of",
    "events_dir",
    "part_name",
    "stored_versions",
    "value_files",
    "values_dir",
    "versions_dir",
    "write_parquet",
]

NS_PER_DAY = 86_400 * 1_000_000_000
_EPOCH = _dt.date(1970, 1, 1)


def values_dir(root: str | Path, view: str, version: str) -> Path:
    """The folder of one view version's value rows."""
    return Path(root) / "values" / f"view={view}" / f"version={version}"


def stored_versions(root: str | Path, view: str) -> list[str]:
    """Versions of ``view`` that have a values folder, sorted."""
    folder = Path(root) / "values" / f"view={view}"
    return sorted(p.name.removeprefix("version=") for p in folder.glob("version=*"))


def events_dir(root: str | Path) -> Path:
    """The folder of the event log."""
    return Path(root) / "events"


def versions_dir(root: str | Path) -> Path:
    """The folder of view-version descriptors."""
    return Path(root) / "versions"


def value_files(root: str | Path, view: str, version: str) -> list[Path]:
    """Every Parquet file of one view version, in name order."""
    return sorted(values_dir(root, view, version).glob("dt=*/*.parquet"))


def day_of(ns: int) -> str:
    """The UTC date of a time in ns since the epoch, ``YYYY-MM-DD``."""
    return (_EPOCH + _dt.timedelta(days=ns // NS_PER_DAY)).isoformat()


def days_of(ns: np.ndarray) -> np.ndarray:
    """Day numbers (days since the epoch, floored) of an int64 array of times."""
    days: np.ndarray = np.floor_divide(ns, NS_PER_DAY)
    return days


def part_name(known_ns: int, writer: str, seq: int) -> str:
    """A part file's name: sorts by the first known time of its rows, unique per writer."""
    return f"part-{max(known_ns, 0):020d}-{writer}-{seq:06d}.parquet"


def write_parquet(table: Any, path: Path, row_group_rows: int) -> None:
    """Write ``table`` to ``path`` atomically (a dot-named temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pyarrow_parquet().write_table(table, tmp, row_group_size=max(1, row_group_rows))
    os.replace(tmp, path)
