"""Real servers on loopback: ``tailguard serve`` started as a child process per module.

``RawClient`` speaks the binary protocol with plain blocking sockets so tests control every
byte (malformed frames, half frames, silence); the library client is tested in tests/client.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from rawclient import RawClient

from tailguard.serve.process import ServerProcess


@pytest.fixture(scope="module")
def server(toy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per test module: TCP, a Unix socket and HTTP on free ports."""
    sock_path = str(tmp_path_factory.mktemp("sock") / "tg.sock")
    with ServerProcess.start(
        toy_dir, "--tcp", "127.0.0.1:0", "--unix", sock_path, "--http", "127.0.0.1:0",
        "--max-frame", "65536", "--handshake-timeout", "0.5",
    ) as proc:
        yield proc


@pytest.fixture
def client(server: ServerProcess) -> Iterator[RawClient]:
    assert server.tcp is not None
    c = RawClient(server.tcp)
    yield c
    c.close()
