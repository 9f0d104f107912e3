"""The HTTP client's response parser: answers split anywhere, pipelined, error codes."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tailguard.bench.httpclient import HttpChannel
from tailguard.bench.recorder import CONNECTION_LOST, HTTP_BASE
from tailguard.schema.wire import Status


def response(status: str, body: bytes, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra}"
            f"CONTENT-LENGTH: {len(body)}\r\n\r\n").encode() + body


ANSWERS = (response("200 OK", b'{"outputs":[]}')
           + response("503 Service Unavailable", b'{"code":"queue_full"}')
           + response("500 Internal Server Error", b"oops", "x-a: 1\r\n") + response("204 No Content", b""))


class _T:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, b: bytes) -> None:
        self.out.append(b)

    def close(self) -> None:
        self.closed = True


def parse(pieces: list[bytes]) -> tuple[list[tuple[Any, ...]], HttpChannel]:
    got: list[tuple[Any, ...]] = []

    async def main() -> HttpChannel:
        ch = HttpChannel([[b"REQ"]], lambda ch, *a: got.append(a), lambda: 99, capacity=8)
        ch.connection_made(_T())  # type: ignore[arg-type]
        for i in range(4):
            ch.submit(0, 0, i, i)
        ch.flush()
        for p in pieces:
            ch.data_received(p)
        return ch

    return got, asyncio.run(main())


@given(st.lists(st.integers(0, len(ANSWERS)), max_size=6))
def test_answers_split_anywhere_are_parsed_in_order(cuts: list[int]) -> None:
    edges = [0, *sorted(cuts), len(ANSWERS)]
    got, ch = parse([ANSWERS[a:b] for a, b in itertools.pairwise(edges) if b > a])
    assert got == [(0, 0, 0, 0, 99), (0, Status.QUEUE_FULL, 1, 1, 99), (0, HTTP_BASE + 500, 2, 2, 99),
                   (0, HTTP_BASE + 204, 3, 3, 99)]
    assert ch.inflight == 0


def test_requests_are_written_in_one_call() -> None:
    _, ch = parse([])
    assert ch.transport.out == [b"REQREQREQREQ"]  # type: ignore[union-attr]


def test_a_chunked_answer_closes_the_connection() -> None:
    got, ch = parse([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"])
    assert got == [] and ch.protocol_error is not None
    assert ch.transport.closed  # type: ignore[union-attr]


def test_requests_in_flight_when_the_connection_drops_are_reported_lost() -> None:
    got, ch = parse([response("200 OK", b"{}")])
    ch.connection_lost(None)
    assert [g[1] for g in got] == [0, CONNECTION_LOST, CONNECTION_LOST, CONNECTION_LOST]
    assert not ch.alive
