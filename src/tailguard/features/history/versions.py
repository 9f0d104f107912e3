"""View-version descriptors: what a version hash was computed from, kept so it can be diffed.

A version (``features/view.py``) is a hash; a hash cannot say what changed.  So each view
version the history sees is described in ``versions/<view>/<version>.json``: the canonical
schema that enters the hash, the SHA-256 of the transform module's source (the other input of
the hash), the **window parameters** found on a fresh transform state (every attribute whose
class stores its constructor arguments under their own names, e.g. ``WindowCount(window_ns)``,
``Ewma(alpha)``), and the stream settings that do not change values (lateness, TTL).
``diff_descriptors`` lists what differs between two of them.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from tailguard.errors import FeatureError
from tailguard.features.history.layout import versions_dir
from tailguard.features.view import FeatureView, _module_source

__all__ = [
    "describe",
    "diff_descriptors",
    "list_versions",
    "load_descriptor",
    "save_descriptor",
]


def describe(view: FeatureView) -> dict[str, Any]:
    """The descriptor of a compiled view (JSON-ready; floats as ``repr`` strings, exact)."""
    s = view.spec
    transform = view.transform
    return {
        "view": s.name,
        "version": view.version,
        "schema": {
            "entity": s.entity,
            "source": s.source.value,
            "fields": [
                {"name": f.name, "dtype": f.dtype, "default": repr(float(f.default))} for f in s.fields
            ],
            "transform": s.transform,
            "inputs": list(s.inputs),
        },
        "transform_sha256": None
        if transform is None
        else hashlib.sha256(_module_source(transform).encode()).hexdigest(),
        "windows": _windows(transform),
        "unversioned": {
            "ttl_s": None if s.ttl is None else repr(float(s.ttl)),
            "allowed_lateness_s": None if s.allowed_lateness is None else repr(float(s.allowed_lateness)),
            "late": s.late.value,
        },
    }


def _windows(transform: object | None) -> dict[str, dict[str, str]]:
    new_state = getattr(transform, "new_state", None)
    if new_state is None:
        return {}
    try:
        state = new_state()
    except Exception:  # user code: a descriptor without windows beats no descriptor
        return {}
    out: dict[str, dict[str, str]] = {}
    for name, obj in _attributes(state):
        params = _constructor_params(obj)
        if params:
            out[name] = {"type": type(obj).__name__, **params}
    return dict(sorted(out.items()))


def _attributes(obj: object) -> list[tuple[str, Any]]:
    names: list[str] = []
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        names.extend([slots] if isinstance(slots, str) else slots)
    names.extend(getattr(obj, "__dict__", {}))
    return [(n, getattr(obj, n)) for n in dict.fromkeys(names) if hasattr(obj, n)]


def _constructor_params(obj: object) -> dict[str, str]:
    """Constructor arguments an object keeps under their own names (scalars only)."""
    if isinstance(obj, int | float | str | bytes | bool | list | dict | tuple) or obj is None:
        return {}
    try:
        params = inspect.signature(type(obj).__init__).parameters
    except (TypeError, ValueError):
        return {}
    found: dict[str, str] = {}
    for p in list(params)[1:]:
        value = getattr(obj, p, None)
        if isinstance(value, int | float | str | bytes | bool):
            found[p] = repr(value)
    return found


def save_descriptor(root: str | Path, view: FeatureView) -> Path:
    """Write the view's descriptor once (a version's descriptor never changes)."""
    path = versions_dir(root) / view.name / f"{view.version}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(msgspec.json.format(msgspec.json.encode(describe(view))))
        tmp.replace(path)
    return path


def load_descriptor(root: str | Path, view: str, version: str) -> dict[str, Any]:
    """The saved descriptor of ``view`` at ``version`` (FeatureError when the history lacks it)."""
    path = versions_dir(root) / view / f"{version}.json"
    try:
        d: dict[str, Any] = msgspec.json.decode(path.read_bytes())
    except FileNotFoundError as exc:
        known = ", ".join(list_versions(root, view)) or "none"
        raise FeatureError(f"no descriptor of view {view!r} version {version!r} in {root} "
                           f"(known: {known})") from exc
    return d


def list_versions(root: str | Path, view: str) -> list[str]:
    """Versions of ``view`` with a descriptor in the history, sorted."""
    return sorted(p.stem for p in (versions_dir(root) / view).glob("*.json"))


def diff_descriptors(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """What changed from descriptor ``a`` to ``b``, one line each (empty: nothing)."""
    out: list[str] = []
    if a.get("view") != b.get("view"):
        out.append(f"view: {a.get('view')} -> {b.get('view')}")
    if a.get("version") != b.get("version"):
        out.append(f"version: {a.get('version')} -> {b.get('version')}")
    sa, sb = a.get("schema", {}), b.get("schema", {})
    for key in ("entity", "source", "transform", "inputs"):
        if sa.get(key) != sb.get(key):
            out.append(f"{key}: {sa.get(key)!r} -> {sb.get(key)!r}")
    out.extend(_diff_fields(sa.get("fields", []), sb.get("fields", [])))
    if a.get("transform_sha256") != b.get("transform_sha256"):
        out.append(f"transform source: sha256 {_short(a.get('transform_sha256'))} -> "
                   f"{_short(b.get('transform_sha256'))}")
    out.extend(_diff_maps("window", a.get("windows", {}), b.get("windows", {})))
    out.extend(_diff_maps("unversioned", {"": a.get("unversioned", {})}, {"": b.get("unversioned", {})}))
    return out


def _short(h: object) -> str:
    return "none" if h is None else str(h)[:12]


def _diff_fields(fa: list[dict[str, str]], fb: list[dict[str, str]]) -> list[str]:
    out: list[str] = []
    by_a = {f["name"]: f for f in fa}
    by_b = {f["name"]: f for f in fb}
    for name, f in by_a.items():
        if name not in by_b:
            out.append(f"field removed: {name} ({f['dtype']}, default {f['default']})")
    for name, f in by_b.items():
        old = by_a.get(name)
        if old is None:
            out.append(f"field added: {name} ({f['dtype']}, default {f['default']})")
            continue
        for attr in ("dtype", "default"):
            if old[attr] != f[attr]:
                out.append(f"field {name}: {attr} {old[attr]} -> {f[attr]}")
    common_a = [n for n in by_a if n in by_b]
    common_b = [n for n in by_b if n in by_a]
    if common_a != common_b:
        out.append(f"field order: {common_a} -> {common_b}")
    return out


def _diff_maps(kind: str, ma: Mapping[str, Any], mb: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for name in sorted(set(ma) | set(mb)):
        pa_, pb_ = ma.get(name), mb.get(name)
        label = f"{kind} {name}".rstrip()
        if pa_ is None:
            out.append(f"{label} added: {_fmt(pb_)}")
        elif pb_ is None:
            out.append(f"{label} removed: {_fmt(pa_)}")
        elif pa_ != pb_:
            for k in sorted(set(pa_) | set(pb_)):
                if pa_.get(k) != pb_.get(k):
                    out.append(f"{label}: {k} {pa_.get(k)} -> {pb_.get(k)}")
    return out


def _fmt(params: Mapping[str, Any] | None) -> str:
    if not params:
        return "{}"
    p = dict(params)
    kind = p.pop("type", "")
    return f"{kind}(" + ", ".join(f"{k}={v}" for k, v in p.items()) + ")"
