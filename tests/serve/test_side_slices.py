"""Idle-time side-path slices: the served app works off the audit backlog between requests,
without its timer, once enough decisions gathered (``ServeConfig.side_slice_backlog``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from inthread import InThreadServer

from tailguard.audit.log import new_key
from tailguard.serve.app import ServeConfig

HOUR = 3600.0  # the side-path timer never fires during a test


def one(server: InThreadServer, key: str) -> None:
    conn = server.client()
    body = {"inputs": [{"name": "item", "shape": [1], "datatype": "BYTES", "data": [key]},
                       {"name": "price", "shape": [1], "datatype": "FP64", "data": [101.0]},
                       {"name": "size", "shape": [1], "datatype": "FP64", "data": [2.0]}]}
    conn.request("POST", "/v2/models/toy/infer", json.dumps(body).encode())
    r = conn.getresponse()
    assert r.status == 200, r.read()
    r.read()
    conn.close()


def audit_state(server: InThreadServer) -> tuple[int, int, int]:
    async def read() -> tuple[int, int, int]:  # on the app's own loop (the owner thread)
        app: Any = server.app
        return app.side_slices, app.audit.written, app.audit.pending

    return asyncio.run_coroutine_threadsafe(read(), server.loop).result(10)


def serve(toy_copy: Path, tmp_path: Path, backlog: int) -> InThreadServer:
    key = tmp_path / "audit.key"
    new_key(key)
    # A generous slice budget: every slice writes all that waits (the count is then exact); the
    # audit log in process (these slices are its work), not in a side process.
    return InThreadServer(toy_copy, ServeConfig(side_path_interval_s=HOUR, side_slice_backlog=backlog,
                                                side_process=False,
                                                side_slice_budget_s=1.0,
                                                audit_dir=str(tmp_path / "audit"), audit_key_file=str(key),
                                                dashboard_interval_s=0))


def test_idle_slices_write_the_audit_backlog_without_the_timer(toy_copy: Path, tmp_path: Path) -> None:
    server = serve(toy_copy, tmp_path, backlog=4)
    try:
        for i in range(13):
            one(server, f"k{i}")
        slices, written, pending = audit_state(server)
        # A slice once 4 decisions wait: after the 4th, 8th and 12th reply.
        assert slices == 3
        assert written == 12 and pending == 1
    finally:
        server.close()


def test_without_idle_slices_the_backlog_waits_for_the_timer(toy_copy: Path, tmp_path: Path) -> None:
    server = serve(toy_copy, tmp_path, backlog=0)
    try:
        for i in range(6):
            one(server, f"k{i}")
        assert audit_state(server) == (0, 0, 6)
    finally:
        server.close()


def test_the_timer_leaves_the_work_to_recent_slices_and_catches_up_without_them(toy_copy: Path,
                                                                                 tmp_path: Path) -> None:
    server = serve(toy_copy, tmp_path, backlog=4)
    try:
        for i in range(5):
            one(server, f"k{i}")
        assert audit_state(server) == (1, 4, 1)

        async def tick(forget_slice: bool) -> None:
            app: Any = server.app
            if forget_slice:
                app._last_slice_ns = 0  # as if the last slice ran long ago
            app._side_path()

        asyncio.run_coroutine_threadsafe(tick(False), server.loop).result(10)
        assert audit_state(server) == (1, 4, 1)  # a slice ran just now: the tick did no side work
        asyncio.run_coroutine_threadsafe(tick(True), server.loop).result(10)
        assert audit_state(server) == (1, 5, 0)
    finally:
        server.close()
