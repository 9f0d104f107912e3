"""The client's I/O-free parts: endpoint parsing, status-to-error mapping, hedge delays,
endpoint health and result building."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tailguard.client import (
    ClientError,
    ConnectFailed,
    Endpoint,
    EndpointState,
    HedgePolicy,
    InvalidRequest,
    Rejected,
    ServerFailed,
    Timeout,
    Transport,
    Unavailable,
)
from tailguard.client._errors import error_from_status
from tailguard.client._health import Balance, Health
from tailguard.client._hedge import LatencyWindow
from tailguard.client._result import batch_result, single_result
from tailguard.decision import Flag
from tailguard.errors import TailguardError
from tailguard.schema.wire import Hello, Notice, Ping, Reply, Request, Status, Welcome
from tailguard.testing import FakeClock

# -- endpoints -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("127.0.0.1:7470", Endpoint(Transport.TCP, "127.0.0.1", 7470), "tcp://127.0.0.1:7470"),
        ("tcp://example.com:80", Endpoint(Transport.TCP, "example.com", 80), "tcp://example.com:80"),
        ("[::1]:9000", Endpoint(Transport.TCP, "::1", 9000), "tcp://[::1]:9000"),
        ("unix:///run/tg.sock", Endpoint(Transport.UNIX, path="/run/tg.sock"), "unix:///run/tg.sock"),
    ],
)
def test_endpoint_parse(text: str, expected: Endpoint, canonical: str) -> None:
    ep = Endpoint.parse(text)
    assert ep == expected and str(ep) == canonical
    assert Endpoint.parse(str(ep)) == ep


@pytest.mark.parametrize("text", ["", "localhost", "host:", ":80", "host:99999", "::1:80", "http://h:1", "unix://"])
def test_endpoint_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="endpoint"):
        Endpoint.parse(text)


# -- errors --------------------------------------------------------------------------------------


@given(st.integers(min_value=10, max_value=60))
def test_every_error_status_maps_by_range(number: int) -> None:
    err = error_from_status(number, "x", retry_after_us=1500)
    expected = InvalidRequest if number < 20 else Rejected if number < 30 else ServerFailed
    assert type(err) is expected
    assert err.number == number and err.retry_after_s == 0.0015
    known = number in Status._value2member_map_
    assert err.code == (Status(number).code if known else f"status_{number}")
    assert (err.status is not None) == known


def test_error_tree() -> None:
    for cls in (InvalidRequest, Rejected, ServerFailed, ConnectFailed, Timeout, Unavailable):
        assert issubclass(cls, ClientError)
    assert issubclass(ClientError, TailguardError)
    assert issubclass(Timeout, TimeoutError) and issubclass(Unavailable, ConnectionError)
    refused = ConnectFailed("no", status=Status.UNSUPPORTED_VERSION)
    assert refused.code == "connect_failed" and refused.status is Status.UNSUPPORTED_VERSION


def test_unavailable_lists_each_endpoint_failure() -> None:
    err = Unavailable("none", errors=[ConnectFailed("refused", endpoint="tcp://a:1")], retry_after_s=0.5)
    assert "tcp://a:1: refused" in str(err) and err.retry_after_s == 0.5


# -- hedge delays ---------------------------------------------------------------------------------


def test_hedge_delay_is_initial_until_enough_samples_then_the_quantile() -> None:
    # window 32: the quantile is refreshed every 32 // 16 = 2 samples.
    w = LatencyWindow(HedgePolicy(quantile=0.9, window=32, min_samples=10, min_delay_s=0.0,
                                  initial_delay_s=0.005))
    for us in range(1, 10):
        w.record(us * 1000)
    assert w.delay_ns() == 5_000_000
    for us in range(10, 33):
        w.record(us * 1000)
    assert w.delay_ns() == 29_000  # the 0.9 quantile of 1..32 µs
    for _ in range(32):
        w.record(1000)  # the window forgets: only the last 32 count
    assert w.delay_ns() == 1_000


def test_hedge_delay_never_below_the_minimum() -> None:
    w = LatencyWindow(HedgePolicy(window=16, min_samples=1, min_delay_s=0.001))
    for _ in range(32):
        w.record(10)
    assert w.delay_ns() == 1_000_000


def test_hedge_policy_validates() -> None:
    with pytest.raises(ValueError, match="quantile"):
        HedgePolicy(quantile=1.0)


# -- health -----------------------------------------------------------------------------------------


def test_health_backoff_doubles_and_is_capped() -> None:
    clock = FakeClock()
    h = Health([Endpoint.parse("a:1"), Endpoint.parse("b:1")], clock.now_ns, balance=Balance.IN_ORDER,
               down_backoff_s=0.1, max_down_backoff_s=0.3)
    a = h.slots[0]
    h.mark_down(a, "x")
    assert h.choose() is h.slots[1] and h.due() == []
    assert h.next_due_s() == pytest.approx(0.1)
    clock.advance(0.1)
    assert h.due() == [a]
    h.mark_down(a, "seen by another call")  # already down: no longer backoff
    assert h.next_due_s() == 0.0
    h.check_failed(a, "check failed")
    assert h.next_due_s() == pytest.approx(0.2)
    h.check_failed(a, "check failed")
    assert h.next_due_s() == pytest.approx(0.3)
    h.mark_up(a)
    assert h.choose() is a and h.states() == {"tcp://a:1": "up", "tcp://b:1": "up"}


def test_round_robin_rotates_and_skips_down_and_busy_endpoints() -> None:
    clock = FakeClock()
    h = Health([Endpoint.parse(f"h{i}:1") for i in range(3)], clock.now_ns)
    assert [h.choose().index for _ in range(3)] == [0, 1, 2]  # type: ignore[union-attr]
    h.mark_draining(h.slots[1])
    assert h.slots[1].state is EndpointState.DRAINING
    h.mark_busy(h.slots[2], 1_000_000_000)
    assert {h.choose().index for _ in range(4)} == {0}  # type: ignore[union-attr]
    assert h.choose(exclude={0}) is h.slots[2]  # busy is only a preference


# -- results -------------------------------------------------------------------------------------

WELCOME = Welcome(1, "s", "toy", 1 << 20, 1, ["item"], ["price"], ["p", "q"], ["primary", "default"],
                  ["normal"], "v1")


def test_single_result() -> None:
    reply = Reply(1, 0, [0.5, 0.25], 1, "m/1", [1], [int(Flag.FALLBACK)], [1, 2, 3, 4, 5, 6])
    r = single_result(reply, WELCOME, "tcp://h:1", True, False, 2, 0.001)
    assert r.outputs == {"p": 0.5, "q": 0.25} and r.output("q") == 0.25
    assert (r.rung, r.flags, r.model_version) == ("default", Flag.FALLBACK, "m/1")
    assert r.timings_ns == {"queue": 1, "ingest": 2, "features": 3, "inference": 4, "delivery": 5,
                            "server_total": 6}
    assert (r.hedged, r.hedge_won, r.attempts) == (True, False, 2)


def test_batch_result_splits_row_major_outputs_by_name() -> None:
    reply = Reply(1, 0, [1.0, 2.0, 3.0, 4.0], 2, "m/1", [0, 1], [0, 1], [])
    b = batch_result(reply, WELCOME, "tcp://h:1", False, False, 1, 0.0)
    assert b.outputs["p"].tolist() == [1.0, 3.0] and b.outputs["q"].tolist() == [2.0, 4.0]
    assert b.rungs == ("primary", "default") and b.flags == (Flag.NONE, Flag.UNKNOWN_ENTITY)
    assert len(b) == 2


# -- docs/protocol.md -----------------------------------------------------------------------------


def _doc_hex_tokens() -> str:
    """Every hex byte token of docs/protocol.md's code blocks, space-joined in order."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    blocks = re.findall(r"```\n(.*?)```", text, re.S)
    tokens = []
    for block in blocks:
        for line in block.splitlines():
            for tok in line.split():
                if not re.fullmatch(r"[0-9a-f]{2}", tok):
                    break  # the annotation starts
                tokens.append(tok)
    return " ".join(tokens) + " " + " ".join(re.findall(r"`((?:[0-9a-f]{2} )+[0-9a-f]{2})`", text))


@pytest.mark.parametrize(
    "message",
    [
        Hello("tailguard", [1], "doc"),
        Request(1, "AAPL", {"bid": 99.5, "ask": 100.5}, "critical", 2000),
        Reply(1, 0, [0.75], 1, "primary/3", [0], [0], [1500, 200, 3000, 9000, 400, 15000]),
        Ping(9),
        Notice("draining"),
    ],
)
def test_protocol_doc_examples_are_what_the_encoder_writes(message: object) -> None:
    import msgspec

    from tailguard.schema.frames import encode_frame

    assert encode_frame(msgspec.msgpack.Encoder(), message).hex(" ") in _doc_hex_tokens()
