"""Many connections: 10,000 idle clients cost the others nothing."""

from __future__ import annotations

import resource
import socket
from pathlib import Path

import msgspec
import pytest
from rawclient import CTX, RawClient

from tailguard.schema.frames import encode_frame
from tailguard.schema.wire import Hello, Status
from tailguard.serve.process import ServerProcess

N = 10_000


def test_ten_thousand_idle_connections_leave_the_server_serving(toy_dir: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < N + 200:
        pytest.skip(f"needs {N + 200} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, N + 200), hard))
    hello = encode_frame(msgspec.msgpack.Encoder(), Hello("tailguard", [1], "idle"))
    socks: list[socket.socket] = []
    try:
        # The server raises its own descriptor limit at start (see serve.workers).
        with ServerProcess.start(toy_dir, "--tcp", "127.0.0.1:0") as proc:
            assert proc.tcp is not None
            host, _, port = proc.tcp.rpartition(":")
            for _ in range(N):
                s = socket.create_connection((host, int(port)), timeout=10)
                s.sendall(hello)
                socks.append(s)
            c = RawClient(proc.tcp)
            assert c.request(1, "a", context=CTX).status == Status.OK
            pong = c.ping(2)
            assert pong.state == "ready"
            # The last idle client was greeted too: every handshake was served.
            last = RawClient.__new__(RawClient)
            last.sock, last.dec = socks[-1], c.dec
            assert last.recv().service == "toy"
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
