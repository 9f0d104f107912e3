"""Shared pieces of the stream-processor and ingest tests: one transform module (written into
the test's directory as ``agg.py``) and the views over it.

The module's source is part of every view version built from it, so a test that needs a
changed version writes ``AGG_MODULE`` plus an edit (``compile_agg(..., module=...)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tailguard.features.view import FeatureView, compile_views
from tailguard.spec import EntitySpec, FeatureViewSpec, FieldSpec

AGG_MODULE = '''"""Stream transforms of the feature tests."""


class Sum:
    """A running sum of ``x`` and a count of the events (double application shows in n)."""

    fields = ("total", "n")

    def new_state(self):
        return [0.0, 0.0]

    def update(self, state, event):
        state[0] += event["x"]
        state[1] += 1.0

    def values(self, state):
        return state


class Last:
    fields = ("x",)

    def new_state(self):
        return [0.0]

    def update(self, state, event):
        state[0] = event["x"]

    def values(self, state):
        return state


class Y:
    fields = ("y",)

    def new_state(self):
        return [0.0]

    def update(self, state, event):
        state[0] += event["y"]

    def values(self, state):
        return state
'''

USERS = (EntitySpec(name="user"),)
#: users and shops (shops keyed by int64)
USERS_AND_SHOPS = (EntitySpec(name="user"), EntitySpec(name="shop", key_dtype="int64"))


def sum_view(name: str = "sums", entity: str = "user", **kw: Any) -> FeatureViewSpec:
    """A view of ``agg:Sum`` (fields ``total``, ``n``); ``kw`` are further spec fields (inputs, ...)."""
    return FeatureViewSpec(name=name, entity=entity, transform="agg:Sum",
                           fields=(FieldSpec(name="total"), FieldSpec(name="n")), **kw)


SUM = sum_view()
LAST = FeatureViewSpec(name="last", entity="user", transform="agg:Last", fields=(FieldSpec(name="x"),))


def compile_agg(directory: Path, specs: tuple[FeatureViewSpec, ...],
                module: str = AGG_MODULE) -> dict[str, FeatureView]:
    """Write ``module`` as ``directory/agg.py`` and compile ``specs`` against it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "agg.py").write_text(module)
    return compile_views(specs, str(directory))
