"""The binary protocol against a real server: answers, pipelining, handshake and bad input."""

from __future__ import annotations

import socket
import struct

import msgspec
from rawclient import CTX, RawClient

from tailguard.schema.frames import encode_frame
from tailguard.schema.wire import Hello, Pong, Refused, Reply, Request, Status, Welcome
from tailguard.serve.process import ServerProcess

ENC = msgspec.msgpack.Encoder()


# -- handshake -----------------------------------------------------------------------------------
def test_welcome_describes_the_service(client: RawClient) -> None:
    w = client.welcome
    assert isinstance(w, Welcome)
    assert (w.version, w.service, w.entities, w.outputs) == (1, "toy", ["item"], ["p"])
    assert w.priorities == ["critical", "normal", "bulk"] and w.rungs[0] == "primary"


def test_a_client_without_a_common_version_is_refused(server: ServerProcess) -> None:
    assert server.tcp is not None
    c = RawClient(server.tcp, hello=False)
    c.send(Hello("tailguard", [99]))
    r = c.recv()
    assert isinstance(r, Refused) and r.status == Status.UNSUPPORTED_VERSION
    assert c.closed_by_server()


def test_a_wrong_magic_is_refused(server: ServerProcess) -> None:
    assert server.tcp is not None
    c = RawClient(server.tcp, hello=False)
    c.send(Hello("nottailguard", [1]))
    assert isinstance(c.recv(), Refused) and c.closed_by_server()


def test_a_client_that_connects_and_says_nothing_is_closed(server: ServerProcess) -> None:
    assert server.tcp is not None
    c = RawClient(server.tcp, hello=False)
    assert c.closed_by_server()  # after --handshake-timeout (0.5 s)


# -- answers -------------------------------------------------------------------------------------
def test_a_request_gets_a_decision_from_the_primary(client: RawClient) -> None:
    r = client.request(7, "a", context=CTX)
    assert (r.id, r.status, r.rows, len(r.outputs), r.rungs) == (7, Status.OK, 1, 1, [0])
    assert 0.0 <= r.outputs[0] <= 1.0 and r.model_version


def test_the_reply_carries_server_stage_timings(client: RawClient) -> None:
    r = client.request(1, "a", context=CTX)
    _queue, ingest, features, inference, delivery, total = r.timings_ns
    assert total >= ingest + features + inference + delivery and min(r.timings_ns) >= 0


def test_the_unix_socket_serves_the_same_protocol(server: ServerProcess) -> None:
    assert server.unix is not None
    c = RawClient(server.unix)
    assert c.request(3, "a", context=CTX).status == Status.OK


def test_a_batch_request_answers_every_row(client: RawClient) -> None:
    r = client.request(2, ["a", "b", "c"], context=CTX, batch=True)
    assert (r.status, r.rows, len(r.outputs), len(r.rungs)) == (Status.OK, 3, 3, 3)


def test_pipelined_requests_are_all_answered_and_matched_by_id(client: RawClient) -> None:
    ids = list(range(100, 164))
    client.send_raw(b"".join(encode_frame(ENC, Request(i, f"k{i % 5}", CTX)) for i in ids))
    replies = [client.recv() for _ in ids]
    assert sorted(r.id for r in replies) == ids and all(r.status == Status.OK for r in replies)


def test_pipelined_answers_equal_sequential_answers(client: RawClient) -> None:
    seq = [client.request(i, f"k{i}", context=CTX).outputs for i in range(8)]
    client.send_raw(b"".join(encode_frame(ENC, Request(i, f"k{i}", CTX)) for i in range(8)))
    piped = {r.id: r.outputs for r in (client.recv() for _ in range(8))}
    assert [piped[i] for i in range(8)] == seq


def test_ping_is_answered_with_the_state(client: RawClient) -> None:
    p = client.ping(5)
    assert isinstance(p, Pong) and (p.id, p.state) == (5, "ready")


# -- bad requests: a clear status, the connection and the server keep working ---------------------
def test_an_unknown_priority_class_gets_its_status(client: RawClient) -> None:
    r = client.request(1, "a", context=CTX, priority="urgent")
    assert (r.status, r.field) == (Status.UNKNOWN_PRIORITY, "priority")
    assert client.request(2, "a", context=CTX).status == Status.OK


def test_an_unknown_model_gets_its_status(client: RawClient) -> None:
    assert client.request(1, "a", context=CTX, model="other").status == Status.UNKNOWN_MODEL


def test_an_unknown_model_version_gets_unknown_model(client: RawClient) -> None:
    r = client.request(1, "a", context=CTX, version="999")
    assert (r.status, r.field) == (Status.UNKNOWN_MODEL, "version")


def test_a_missing_context_field_is_an_invalid_request_naming_it(client: RawClient) -> None:
    r = client.request(9, "a", context={"price": 1.0})
    assert r.status == Status.INVALID_REQUEST and "size" in (r.field + r.error)


def test_a_wrongly_typed_field_is_an_invalid_request_with_the_id(client: RawClient) -> None:
    client.send_raw(encode_frame(ENC, [4, 77, "a", None, "normal", "not-a-number"]))
    r = client.recv()
    assert (r.id, r.status) == (77, Status.INVALID_REQUEST)
    assert client.request(2, "a", context=CTX).status == Status.OK


def test_garbage_inside_a_frame_is_malformed_and_the_connection_survives(client: RawClient) -> None:
    client.send_raw(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
    assert client.recv().status == Status.MALFORMED
    assert client.request(2, "a", context=CTX).status == Status.OK


def test_an_oversize_frame_is_refused_and_the_connection_closed(client: RawClient) -> None:
    client.send_raw(struct.pack(">I", 1 << 30))
    r = client.recv()
    assert isinstance(r, Reply) and r.status == Status.FRAME_TOO_LARGE
    assert client.closed_by_server()


def test_a_truncated_frame_then_disconnect_leaves_the_server_serving(server: ServerProcess) -> None:
    assert server.tcp is not None
    c = RawClient(server.tcp)
    c.send_raw(encode_frame(ENC, Request(1, "a", CTX))[:-3])
    c.close()
    other = RawClient(server.tcp)
    assert other.request(1, "a", context=CTX).status == Status.OK


def test_a_client_that_vanishes_with_requests_in_flight_harms_no_neighbour(server: ServerProcess) -> None:
    assert server.tcp is not None
    c = RawClient(server.tcp)
    c.send_raw(b"".join(encode_frame(ENC, Request(i, "a", CTX, batch=False)) for i in range(200)))
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
    c.close()
    other = RawClient(server.tcp)
    assert other.request(1, "a", context=CTX).status == Status.OK

