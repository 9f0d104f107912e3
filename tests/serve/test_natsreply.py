"""``serve.natsreply`` pieces that need no NATS server (the rest: tests/integration/test_serve_nats.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import msgspec
import pytest

from tailguard.errors import TailguardError
from tailguard.features.online.server import free_port
from tailguard.schema.wire import Request
from tailguard.serve.natsreply import NatsReplier, _best_effort_id, default_queue, default_subject
from tailguard.serve.problems import NatsUnavailable, ServeError
from tailguard.testing import FakeClock

pytest.importorskip("nats")


def fake_app() -> SimpleNamespace:
    """What ``NatsReplier`` reads of an ``App`` before it has a connection."""
    return SimpleNamespace(service=SimpleNamespace(spec=SimpleNamespace(name="toy")), dispatcher=None,
                           clock=FakeClock())


def test_subject_and_queue_default_to_the_service_name() -> None:
    r = NatsReplier(fake_app(), "nats://127.0.0.1:4222")  # type: ignore[arg-type]
    assert (r.subject, r.queue) == (default_subject("toy"), default_queue("toy")) == (
        "tailguard.toy.predict", "toy")
    r = NatsReplier(fake_app(), "nats://x", "s.t", "")  # type: ignore[arg-type]
    assert (r.subject, r.queue) == ("s.t", "")  # "" : a plain subscription, every replica gets each request


def test_an_unreachable_nats_server_fails_the_start_with_a_stable_code() -> None:
    # A port nothing listens on: nats-py would retry it for ever; the start gives up in time.
    r = NatsReplier(fake_app(), f"nats://127.0.0.1:{free_port()}", connect_timeout_s=0.3)  # type: ignore[arg-type]
    with pytest.raises(NatsUnavailable) as info:
        asyncio.run(r.start())
    assert info.value.code == "nats_unavailable"
    assert isinstance(info.value, ServeError) and isinstance(info.value, TailguardError)


def test_a_refused_payload_is_answered_with_its_request_id_when_readable() -> None:
    assert _best_effort_id(msgspec.msgpack.encode([4, 77, "a", None, "", "not-an-int"])) == 77
    assert _best_effort_id(msgspec.msgpack.encode(Request(9, "a"))) == 9
    assert _best_effort_id(b"\xc1 not msgpack") == 0
    assert _best_effort_id(msgspec.msgpack.encode({"id": 5})) == 0
