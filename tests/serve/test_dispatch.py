"""The dispatcher in-process: one App on a real event loop, replies captured by a sink."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tailguard import load_service
from tailguard.schema.wire import Reply, Request, Status
from tailguard.serve.app import App, ServeConfig, State

CTX = {"price": 104.5, "size": 3.0}


class Sink:
    """Collects replies; ``closed`` simulates a client that went away."""

    def __init__(self) -> None:
        self.closed = False
        self.replies: list[Reply] = []
        self.flushes = 0

    def deliver(self, reply: Reply) -> None:
        self.replies.append(reply)

    def flush(self) -> None:
        self.flushes += 1


@pytest.fixture
def app(toy_dir: Path) -> Iterator[App]:
    loop = asyncio.new_event_loop()
    service = load_service(toy_dir, freeze_gc=False)
    a = App(service, ServeConfig(), loop)
    a.state = State.READY
    yield a
    a.stop()
    loop.close()


def run_until_answered(app: App, sink: Sink, n: int) -> None:
    app.dispatcher.flush()  # what a transport does at the end of a read

    async def wait() -> None:
        while len(sink.replies) < n:
            await asyncio.sleep(0)

    app.loop.run_until_complete(asyncio.wait_for(wait(), 10))


def submit(app: App, sink: Sink, req: Request) -> None:
    app.dispatcher.submit(req, app.clock.now_ns(), sink)


def test_a_request_is_answered_once_with_its_id(app: App) -> None:
    sink = Sink()
    submit(app, sink, Request(41, "a", CTX))
    run_until_answered(app, sink, 1)
    assert [(r.id, r.status) for r in sink.replies] == [(41, Status.OK)]


def test_queued_single_requests_are_scored_as_one_micro_batch(app: App) -> None:
    sink = Sink()
    for i in range(10):
        submit(app, sink, Request(i, f"k{i}", CTX))
    run_until_answered(app, sink, 10)
    assert app.scheduler.statistics()["batches"] == 1
    assert sorted(r.id for r in sink.replies) == list(range(10))


def test_micro_batched_answers_equal_single_answers(app: App) -> None:
    single = Sink()
    for i in range(4):
        submit(app, single, Request(i, f"k{i}", CTX))
        run_until_answered(app, single, i + 1)
    batched = Sink()
    for i in range(4):
        submit(app, batched, Request(i, f"k{i}", CTX))
    run_until_answered(app, batched, 4)
    assert {r.id: r.outputs for r in batched.replies} == {r.id: r.outputs for r in single.replies}


def test_one_bad_request_does_not_fail_its_batch_neighbours(app: App) -> None:
    sink = Sink()
    submit(app, sink, Request(1, "a", CTX))
    submit(app, sink, Request(2, "b", {"price": "x", "size": 1.0}))
    submit(app, sink, Request(3, "c", CTX))
    run_until_answered(app, sink, 3)
    status = {r.id: r.status for r in sink.replies}
    assert status == {1: Status.OK, 2: Status.INVALID_REQUEST, 3: Status.OK}


def test_while_draining_new_requests_get_draining(app: App) -> None:
    app.begin_drain()
    sink = Sink()
    submit(app, sink, Request(5, "a", CTX))
    app.loop.run_until_complete(app.wait_stopped())
    assert [(r.id, r.status) for r in sink.replies] == [(5, Status.DRAINING)]


def test_requests_queued_before_the_drain_are_still_answered(app: App) -> None:
    sink = Sink()
    for i in range(5):
        submit(app, sink, Request(i, "a", CTX))
    app.dispatcher.flush()
    app.begin_drain()
    app.loop.run_until_complete(app.wait_stopped())
    assert [r.status for r in sink.replies] == [Status.OK] * 5


def test_a_closed_sink_gets_nothing_and_is_counted_abandoned(app: App) -> None:
    sink = Sink()
    submit(app, sink, Request(1, "a", CTX))
    sink.closed = True
    app.dispatcher.flush()
    assert sink.replies == [] and app.dispatcher.abandoned == 1 and app.dispatcher.idle


def test_a_request_budget_shorter_than_the_models_is_degraded_at_the_door(app: App) -> None:
    for _ in range(20):  # both model rungs learned to take 5 ms
        app.scheduler.observe(0, 1, 5_000_000)
        app.scheduler.observe(1, 1, 5_000_000)
    sink = Sink()
    submit(app, sink, Request(1, "a", CTX, budget_us=1000))
    run_until_answered(app, sink, 1)
    r = sink.replies[0]
    assert r.status == Status.OK and app.welcome.rungs[r.rungs[0]] in ("last_good", "default")


def test_errors_are_counted_by_code(app: App) -> None:
    sink = Sink()
    submit(app, sink, Request(1, "a", CTX, priority="nope"))
    assert app.dispatcher.statistics()["errors"] == {"unknown_priority": 1}
