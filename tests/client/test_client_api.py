"""The client package's curated surface: a sorted, complete ``__all__`` with docstrings."""

from __future__ import annotations

import inspect
import types

import tailguard.client as client


def test_all_is_sorted_and_complete() -> None:
    assert client.__all__ == sorted(client.__all__)
    public = {
        n for n, v in vars(client).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    assert public == set(client.__all__)


def test_every_public_class_and_method_has_a_docstring() -> None:
    missing = []
    for name in client.__all__:
        obj = getattr(client, name)
        if not inspect.isclass(obj):
            continue
        if not inspect.getdoc(obj):
            missing.append(name)
        for m, f in vars(obj).items():
            if not m.startswith("_") and (inspect.isfunction(f) or isinstance(f, property)):
                target = f.fget if isinstance(f, property) else f
                if not (inspect.getdoc(target) or "").strip():
                    missing.append(f"{name}.{m}")
    assert missing == []


def test_sync_and_async_clients_take_the_same_arguments() -> None:
    sync = inspect.signature(client.Client.__init__).parameters
    async_ = inspect.signature(client.AsyncClient.__init__).parameters
    assert list(sync) == list(async_)
    for name in ("predict", "predict_batch"):
        sync_params = inspect.signature(getattr(client.Client, name)).parameters
        async_params = inspect.signature(getattr(client.AsyncClient, name)).parameters
        assert list(sync_params) == list(async_params)
