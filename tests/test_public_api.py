"""The curated public surface: a sorted, complete ``__all__`` and documented modules."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types

import pytest

import tailguard


def public_modules() -> list[str]:
    names = ["tailguard"]
    for info in pkgutil.walk_packages(tailguard.__path__, "tailguard."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def test_all_is_sorted() -> None:
    assert tailguard.__all__ == sorted(tailguard.__all__)


def test_all_has_no_duplicates() -> None:
    assert len(set(tailguard.__all__)) == len(tailguard.__all__)


def test_every_name_in_all_resolves() -> None:
    missing = [n for n in tailguard.__all__ if not hasattr(tailguard, n)]
    assert missing == []


def test_all_lists_every_public_name() -> None:
    public = {
        n for n, v in vars(tailguard).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    assert public == set(tailguard.__all__)


@pytest.mark.parametrize("name", public_modules())
def test_every_public_module_has_a_docstring(name: str) -> None:
    module = importlib.import_module(name)
    assert (module.__doc__ or "").strip(), f"{name} has no docstring"


@pytest.mark.parametrize("name", [n for n in tailguard.__all__ if callable(getattr(tailguard, n))])
def test_every_public_class_and_function_has_a_docstring(name: str) -> None:
    assert inspect.getdoc(getattr(tailguard, name)), f"tailguard.{name} has no docstring"


@pytest.mark.parametrize("name", public_modules())
def test_module_all_names_resolve(name: str) -> None:
    module = importlib.import_module(name)
    assert [n for n in getattr(module, "__all__", []) if not hasattr(module, n)] == []


def test_version_is_exposed() -> None:
    assert tailguard.__version__


def _public_classes() -> list[tuple[str, type]]:
    found = []
    for name in public_modules():
        module = importlib.import_module(name)
        for cname, cls in vars(module).items():
            if inspect.isclass(cls) and not cname.startswith("_") and cls.__module__ == name:
                found.append((f"{name}.{cname}", cls))
    return found


def _doc(f: object) -> str:
    target = f.fget if isinstance(f, property) else getattr(f, "__func__", f)
    return (inspect.getdoc(target) or "").strip()


@pytest.mark.parametrize(
    ("qualname", "cls"), _public_classes(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_public_method_has_a_docstring(qualname: str, cls: type) -> None:
    undocumented = [
        m for m, f in vars(cls).items()
        if not m.startswith("_")
        and (inspect.isfunction(f) or isinstance(f, staticmethod | classmethod | property))
        and not _doc(f)
    ]
    assert undocumented == [], f"{qualname}: {undocumented}"
