"""The history package's optional dependencies, imported on first use.

pyarrow (Parquet) and duckdb (point-in-time joins) are the ``history`` extra: serving never
needs them, so nothing imports them at module load.  A missing one raises ``FeatureError``
naming the command that installs it.
"""

from __future__ import annotations

import importlib
from typing import Any

from tailguard.errors import FeatureError

__all__ = ["PIP_HINT", "duckdb", "pyarrow", "pyarrow_parquet", "to_arrow"]

PIP_HINT = "pip install 'tailguard[history]'"


def _load(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise FeatureError(f"feature history needs {name.split('.')[0]}: {PIP_HINT}") from exc


def pyarrow() -> Any:
    """The ``pyarrow`` module (FeatureError with the install hint when missing)."""
    return _load("pyarrow")


def pyarrow_parquet() -> Any:
    """The ``pyarrow.parquet`` module."""
    return _load("pyarrow.parquet")


def duckdb() -> Any:
    """The ``duckdb`` module."""
    return _load("duckdb")


def to_arrow(con: Any, sql: str) -> Any:
    """The result of ``sql`` on DuckDB connection ``con`` as a ``pyarrow.Table`` (through the
    relation API, which hands Arrow the rows without a copy; the method's name changed)."""
    rel = con.sql(sql)
    fetch = getattr(rel, "to_arrow_table", None) or rel.arrow
    return fetch()
