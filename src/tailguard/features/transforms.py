"""Transforms: the code that turns events and request context into feature values.

Two calling conventions, both resolved once when the service loads (``"module:attr"`` in
the service directory) and never looked up per request:

* **Stream transforms** (views with ``source = "stream"``) are incremental: per entity they
  keep a state, ``update(state, event)`` folds one event in, O(1), and ``values(state)``
  returns the view's fields in declared order.  Replaying the same events always gives the
  same values (bit for bit), which is what makes training sets built by replay match serving.
* **Request transforms** (views with ``source = "request"``) are pure functions of context
  fields, called with one argument per declared input (floats at batch 1, numpy arrays for a
  batch) and returning one value or array per field.  Arithmetic only, no branching on data,
  so the same code serves one entity and hundreds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tailguard.errors import FeatureError
from tailguard.spec import FeatureViewSpec, ViewSource

__all__ = ["RequestTransform", "StreamTransform", "load_module", "resolve_transform"]


@runtime_checkable
class StreamTransform(Protocol):
    """Incremental per-entity feature computation, O(1) per event.  One thread owns the states."""

    def new_state(self) -> Any:
        """A fresh state for an entity that has seen no event."""
        ...

    def update(self, state: Any, event: Mapping[str, Any]) -> None:
        """Fold one event into the entity's state (events arrive in event-time order)."""
        ...

    def values(self, state: Any) -> Sequence[float]:
        """The view's fields, in declared order, for the current state."""
        ...


RequestTransform = Callable[..., Any]

_LOADED: dict[tuple[str, str], Any] = {}


def load_module(service_dir: str | None, module: str) -> Any:
    """Import ``module`` from the service directory (or from ``sys.path`` when none is given).

    Modules are registered under a name unique to the directory and content, so two services
    with a ``features.py`` each do not collide and an edited file is imported afresh; the
    directory is on ``sys.path`` only while the module executes, so it may import its
    siblings, which are then kept private to it.
    """
    if service_dir is None:
        return importlib.import_module(module)
    root = Path(service_dir).resolve()
    rel = Path(*module.split("."))
    path = root / rel.with_suffix(".py")
    if not path.exists():
        path = root / rel / "__init__.py"
    if not path.exists():
        # Not in the service directory: an installed module (e.g. a shared transform library).
        return importlib.import_module(module)
    # Keyed by content: an edited module is imported afresh, so the code that runs is the
    # code whose source the view version hashes.
    digest = hashlib.sha256(str(root).encode() + b"\0" + path.read_bytes()).hexdigest()[:16]
    key = (str(path), digest)
    if key in _LOADED:
        return _LOADED[key]
    unique = f"_tailguard_svc_{digest}_{module.replace('.', '_')}"
    spec = importlib.util.spec_from_file_location(unique, path)
    if spec is None or spec.loader is None:
        raise FeatureError(f"cannot import transform module {module!r} from {root}")
    mod = importlib.util.module_from_spec(spec)
    before = set(sys.modules)
    sys.modules[unique] = mod
    sys.path.insert(0, str(root))
    try:
        spec.loader.exec_module(mod)
    except Exception as exc:
        del sys.modules[unique]
        raise FeatureError(f"transform module {module!r} failed to import: {exc}") from exc
    finally:
        sys.path.remove(str(root))
        # Siblings imported from the service directory stay private to this module (it holds
        # them): out of sys.modules, another service's sibling of the same name is its own.
        for name in set(sys.modules) - before - {unique}:
            file = getattr(sys.modules[name], "__file__", None)
            if file and Path(file).resolve().is_relative_to(root):
                del sys.modules[name]
    _LOADED[key] = mod
    return mod


def resolve_transform(spec: FeatureViewSpec, service_dir: str | None) -> Any:
    """Resolve and check a view's transform reference; instantiate stream transform classes."""
    assert spec.transform is not None
    module_name, _, attr = spec.transform.partition(":")
    mod = load_module(service_dir, module_name)
    try:
        obj = getattr(mod, attr)
    except AttributeError as exc:
        raise FeatureError(
            f"view {spec.name!r}: transform {spec.transform!r} not found in module {module_name!r}"
        ) from exc
    if spec.source is ViewSource.REQUEST:
        _check_request_transform(spec, obj)
        return obj
    inst = obj() if isinstance(obj, type) else obj
    if not isinstance(inst, StreamTransform):
        raise FeatureError(
            f"view {spec.name!r}: stream transform {spec.transform!r} must define "
            "new_state(), update(state, event) and values(state)"
        )
    declared = getattr(inst, "fields", None)
    names = tuple(f.name for f in spec.fields)
    if declared is not None and tuple(declared) != names:
        raise FeatureError(
            f"view {spec.name!r}: transform produces fields {list(declared)} "
            f"but the view declares {list(names)}"
        )
    return inst


def _check_request_transform(spec: FeatureViewSpec, fn: Any) -> None:
    if not callable(fn):
        raise FeatureError(f"view {spec.name!r}: request transform {spec.transform!r} is not callable")
    probe = [np.linspace(1.0, 2.0, 3) + i for i in range(len(spec.inputs))]
    try:
        first = fn(*probe)
        second = fn(*probe)
    except Exception as exc:
        raise FeatureError(f"view {spec.name!r}: request transform failed on probe input: {exc}") from exc
    out = first if isinstance(first, tuple | list) else (first,)
    if len(out) != len(spec.fields):
        raise FeatureError(
            f"view {spec.name!r}: request transform returns {len(out)} values, "
            f"the view declares {len(spec.fields)} fields"
        )
    again = second if isinstance(second, tuple | list) else (second,)
    for a, b in zip(out, again, strict=True):
        if not np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True):
            raise FeatureError(f"view {spec.name!r}: request transform is not deterministic")
