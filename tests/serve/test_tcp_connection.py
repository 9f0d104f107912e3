"""``BinaryConnection`` fuzzed on a recording transport: whatever bytes a client sends, the
connection answers with frames the protocol defines or closes — it never raises into the
loop — and a well-behaved request after garbage in a *well-framed* frame is still answered."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tailguard import load_service
from tailguard.schema.frames import FrameReader, client_decoder, encode_frame
from tailguard.schema.wire import Hello, Reply, Request, Status, Welcome
from tailguard.serve.app import App, ServeConfig, State
from tailguard.serve.tcp import BinaryConnection

ENC = msgspec.msgpack.Encoder()
CTX = {"price": 104.5, "size": 3.0}


class Recorder(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data: Any) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


@pytest.fixture(scope="module")
def app(toy_dir: Path) -> Iterator[App]:
    loop = asyncio.new_event_loop()
    a = App(load_service(toy_dir, freeze_gc=False), ServeConfig(max_frame=4096, calibrate=False), loop)
    a.state = State.READY
    yield a
    a.stop()
    loop.close()


def connect(app: App) -> tuple[BinaryConnection, Recorder]:
    conn, t = BinaryConnection(app), Recorder()
    conn.connection_made(t)
    return conn, t


def messages(t: Recorder) -> list[Any]:
    dec = client_decoder()
    return [dec.decode(f) for f in FrameReader(1 << 20).feed(bytes(t.out))]


def greet(conn: BinaryConnection) -> None:
    conn.data_received(encode_frame(ENC, Hello("tailguard", [1], "fuzz")))


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=150)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_random_bytes_after_the_handshake_never_raise(app: App, chunks: list[bytes]) -> None:
    conn, t = connect(app)
    greet(conn)
    for c in chunks:
        if t.closed:
            break
        conn.data_received(c)
    msgs = messages(t)  # everything written is a decodable server message
    assert isinstance(msgs[0], Welcome)
    conn.connection_lost(None)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=100)
@given(st.lists(st.binary(max_size=48), min_size=1, max_size=5))
def test_garbage_inside_frames_is_answered_and_the_next_request_served(app: App, bodies: list[bytes]) -> None:
    conn, t = connect(app)
    greet(conn)
    for b in bodies:
        conn.data_received(struct.pack(">I", len(b)) + b)
    conn.data_received(encode_frame(ENC, Request(4242, "a", CTX)))
    app.loop.run_until_complete(asyncio.sleep(0))
    replies = [m for m in messages(t) if isinstance(m, Reply)]
    assert not t.closed
    assert any(r.id == 4242 and r.status == Status.OK for r in replies)
    conn.connection_lost(None)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=100)
@given(st.binary(max_size=64))
def test_random_bytes_before_the_handshake_are_refused_or_awaited(app: App, data: bytes) -> None:
    conn, t = connect(app)
    conn.data_received(data)
    msgs = messages(t)
    assert not conn.greeted or isinstance(msgs[0], Welcome)
    conn.connection_lost(None)
