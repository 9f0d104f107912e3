"""Fixtures for the client tests: scriptable fake servers, closed after each test."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakeserver import FakeServer, refused_address


@pytest.fixture
def make_server() -> Iterator[Callable[..., FakeServer]]:
    """``make_server(**kwargs)`` starts a ``FakeServer``; all are closed after the test."""
    servers: list[FakeServer] = []

    def make(**kwargs: Any) -> FakeServer:
        s = FakeServer(**kwargs)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


@pytest.fixture
def refused() -> Iterator[str]:
    """A loopback address that refuses connections for the whole test."""
    address, sock = refused_address()
    yield address
    sock.close()


@pytest.fixture
def sock_path() -> Iterator[str]:
    """A short Unix socket path (the 108-byte limit rules out deep tmp paths)."""
    d = tempfile.mkdtemp(prefix="tgc")
    yield str(Path(d) / "s")
    shutil.rmtree(d, ignore_errors=True)
