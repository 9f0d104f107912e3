"""The private redis-server child that tests and benchmarks start (``features.online.server``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from services import require_binary

from tailguard.features.online.server import LocalRedis


def test_starts_answers_and_restarts_on_the_same_port(tmp_path: Path) -> None:
    with LocalRedis(require_binary("redis-server"), tmp_path) as server:
        port = server.port
        assert server.answers_ping() and server.url == f"redis://127.0.0.1:{port}/0"
        assert server.version()[:1].isdigit()
        server.stop()
        assert not server.answers_ping()
        server.start()
        assert server.port == port and server.answers_ping()
    assert server.proc is None and not server.answers_ping()


def test_a_taken_port_is_an_error_not_a_hang(tmp_path: Path) -> None:
    binary = require_binary("redis-server")
    with LocalRedis(binary, tmp_path) as first:
        second = LocalRedis(binary, tmp_path, port=first.port)
        second.answers_ping = lambda: False  # type: ignore[method-assign]  # the first one answers on that port
        with pytest.raises(RuntimeError, match="exited"):
            second.start(timeout_s=10.0)
        assert second.proc is None
