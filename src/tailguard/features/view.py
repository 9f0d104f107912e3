"""Feature views compiled from the spec: numpy dtypes, default rows, transforms and versions.

A view's **version** is the SHA-256 (first 16 hex digits) of its canonical schema (name,
entity, source, field names, dtypes and defaults, transform reference and inputs) and of the source
text of the module that defines its transform.  Hashing the whole module, not just the
referenced object, is deliberate: a helper the transform calls can change its values too.
Descriptions and TTLs do not change values, so they are not part of the version.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from tailguard.features.transforms import RequestTransform, StreamTransform, resolve_transform
from tailguard.spec import FeatureViewSpec, ViewSource

__all__ = ["FeatureView", "compile_views", "view_version"]


@dataclass(frozen=True, eq=False)
class FeatureView:
    """A view ready to serve: structured dtype, defaults, transform and version (immutable)."""

    spec: FeatureViewSpec
    version: str
    #: Structured dtype of one row, one field per declared feature, declared dtypes.
    row_dtype: np.dtype[Any]
    #: The declared defaults as one structured row and as a float32 vector (model input form).
    default_row: np.ndarray
    default_f32: np.ndarray
    transform: StreamTransform | RequestTransform | None = field(default=None)

    @property
    def name(self) -> str:
        """The view's name."""
        return self.spec.name

    @property
    def field_names(self) -> tuple[str, ...]:
        """Field names, in declared order."""
        return tuple(f.name for f in self.spec.fields)

    @property
    def ttl_ns(self) -> int | None:
        """The TTL in integer nanoseconds (None: values never go stale)."""
        return None if self.spec.ttl is None else round(self.spec.ttl * 1e9)

    @property
    def is_request(self) -> bool:
        """True for views computed from the request context."""
        return self.spec.source is ViewSource.REQUEST

    def qualified(self) -> tuple[str, ...]:
        """Column names as models see them: ``view.field``."""
        return tuple(f"{self.name}.{f}" for f in self.field_names)


def _module_source(obj: object) -> str:
    module = inspect.getmodule(obj)
    try:
        return inspect.getsource(module) if module is not None else inspect.getsource(obj)  # type: ignore[arg-type]
    except (OSError, TypeError):
        # Built-in or dynamically created: fall back to the qualified name (still deterministic).
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def view_version(spec: FeatureViewSpec, transform: object | None) -> str:
    """The version hash of a view: canonical schema plus transform module source."""
    schema = {
        "name": spec.name,
        "entity": spec.entity,
        "source": spec.source.value,
        "fields": [[f.name, f.dtype, repr(float(f.default))] for f in spec.fields],
        "transform": spec.transform,
        "inputs": list(spec.inputs),
    }
    h = hashlib.sha256(msgspec.json.encode(schema))
    if transform is not None:
        h.update(b"\0")
        h.update(_module_source(transform).encode())
    return h.hexdigest()[:16]


def _compile(spec: FeatureViewSpec, service_dir: str | None) -> FeatureView:
    row_dtype = np.dtype([(f.name, f.dtype) for f in spec.fields])
    default_row = np.zeros((), dtype=row_dtype)
    for f in spec.fields:
        default_row[f.name] = f.default
    default_f32 = np.array([f.default for f in spec.fields], dtype=np.float32)
    transform = None
    if spec.transform is not None:
        transform = resolve_transform(spec, service_dir)
    elif spec.source is ViewSource.REQUEST and tuple(f.name for f in spec.fields) != spec.inputs:
        from tailguard.errors import FeatureError

        raise FeatureError(
            f"view {spec.name!r}: a request view without a transform passes its inputs through, "
            f"so its fields must equal its inputs {list(spec.inputs)}"
        )
    return FeatureView(
        spec=spec,
        version=view_version(spec, transform),
        row_dtype=row_dtype,
        default_row=default_row,
        default_f32=default_f32,
        transform=transform,
    )


def compile_views(
    specs: tuple[FeatureViewSpec, ...], service_dir: str | None = None
) -> dict[str, FeatureView]:
    """Compile every view once, at service load (transforms imported, versions hashed)."""
    return {s.name: _compile(s, service_dir) for s in specs}
