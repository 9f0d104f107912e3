"""The NATS JetStream ingest worker against a real nats-server: the rows it writes equal those
of applying the same events in process, bit for bit, whether a message holds one event or a
batch; a NATS outage mid-batch and a restarted or SIGKILLed worker lose nothing and count
nothing twice; poison events (alone or inside a batch) go to the dead-letter subject with
their reason and ingest goes on; repeated event ids are counted, applied once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from services import NatsServer, running_nats
from streamkit import AGG_MODULE, USERS, compile_agg, sum_view

from tailguard.errors import FeatureError
from tailguard.features.ingest import BodyFormat, IngestConfig, IngestWorker
from tailguard.features.ingest_checkpoint import read_header
from tailguard.features.ingest_nats import stream_seq
from tailguard.features.store import InMemoryOnlineStore
from tailguard.features.stream import StreamProcessor
from tailguard.features.transforms import load_module
from tailguard.features.view import FeatureView, compile_views
from tailguard.spec import EntitySpec, StreamSpec, load_spec

nats = pytest.importorskip("nats")
from nats.js.api import StorageType, StreamConfig  # noqa: E402

TRADING = Path(__file__).resolve().parents[2] / "examples" / "trading"
STREAM, SUBJECT, DEAD = "EVENTS", "events", "events.dead"

COUNT = sum_view("counts", inputs=("x",))
COUNT_STREAM = StreamSpec(event_id="id")


# -- fixtures and helpers ------------------------------------------------------------------------
@pytest.fixture
def natsd(tmp_path: Path) -> Iterator[NatsServer]:
    with running_nats(tmp_path / "jetstream") as server:
        asyncio.run(_add_streams(server.url))
        yield server


async def _add_streams(url: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT], storage=StorageType.FILE))
    await js.add_stream(StreamConfig(name="DEAD", subjects=[DEAD], storage=StorageType.FILE))
    await nc.close()


def publish(url: str, bodies: Sequence[bytes]) -> int:
    """Publish ``bodies`` in order; returns the stream's last sequence once all are stored."""
    async def go() -> int:
        nc = await nats.connect(url)
        js = nc.jetstream()
        before = (await js.stream_info(STREAM)).state.messages
        for i, b in enumerate(bodies):
            await nc.publish(SUBJECT, b)
            if i % 1000 == 999:
                await nc.flush()
        await nc.flush()
        while (info := await js.stream_info(STREAM)).state.messages < before + len(bodies):
            await asyncio.sleep(0.01)  # waiting for the server to store them, not a race
        await nc.close()
        return int(info.state.last_seq)
    return asyncio.run(go())


def eventually(pred: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Poll a condition another process or thread makes true (readiness, not a race)."""
    end = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.01)


def ticks(seconds: float, n_instruments: int = 4) -> list[dict[str, Any]]:
    cols = load_module(str(TRADING), "ticks").generate_ticks(seconds, n_instruments=n_instruments, seed=3)
    names = ("ts_ns", "bid", "ask", "bid_size", "ask_size", "trade_size")
    lists = {k: cols[k].tolist() for k in names}
    symbols = cols["symbol"].tolist()
    return [{"instrument": s, **{k: lists[k][i] for k in names}} for i, s in enumerate(symbols)]


def trading() -> tuple[Any, dict[str, FeatureView]]:
    spec = load_spec(TRADING)
    return spec, compile_views(spec.feature_views, str(TRADING))


def counting(tmp_path: Path) -> dict[str, FeatureView]:
    return compile_agg(tmp_path, (COUNT,))


def reference(views: Mapping[str, FeatureView], entities: Sequence[EntitySpec], config: StreamSpec,
              events: Sequence[Mapping[str, Any]]) -> tuple[InMemoryOnlineStore, StreamProcessor]:
    """The same events applied in process (write-through), in order."""
    store = InMemoryOnlineStore(views, entities)
    p = StreamProcessor(views, store, config, entities=entities)
    for seq, ev in enumerate(events, 1):
        p.process(ev, seq=seq)
    return store, p


def assert_same_rows(got: InMemoryOnlineStore, want: InMemoryOnlineStore, view: str, entity: str) -> None:
    keys = want.keys(entity)
    assert got.keys(entity) and sorted(got.keys(entity)) == sorted(keys)
    g, w = got.table(view), want.table(view)
    for k in keys:
        i, j = got.row(entity, k), want.row(entity, k)
        assert g.values[i].tobytes() == w.values[j].tobytes(), k  # bit for bit
        assert g.event_ns[i] == w.event_ns[j]


def worker(views: Mapping[str, FeatureView], store: InMemoryOnlineStore, url: str,
           entities: Sequence[EntitySpec], stream: StreamSpec, **kw: Any) -> IngestWorker:
    p = StreamProcessor(views, store, stream, entities=entities, write_through=False)
    defaults: dict[str, Any] = {"checkpoint_interval_s": 0.0, "backoff_s": 0.02, "max_backoff_s": 0.2}
    config = IngestConfig(nats_url=url, stream=STREAM, subject=SUBJECT, **{**defaults, **kw})
    return IngestWorker(p, views, config)


ENC = msgspec.msgpack.Encoder()


def bodies(events: Sequence[Mapping[str, Any]], per_message: int = 1) -> list[bytes]:
    """One map per message, or arrays of ``per_message`` events (the batch body)."""
    if per_message == 1:
        return [ENC.encode(e) for e in events]
    return [ENC.encode(events[i:i + per_message]) for i in range(0, len(events), per_message)]


# -- behaviour -----------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [BodyFormat.MSGPACK, BodyFormat.JSON])
def test_rows_equal_applying_the_same_events_in_process(
        natsd: NatsServer, tmp_path: Path, body: BodyFormat) -> None:
    spec, views = trading()
    events = ticks(20.0)
    encode = ENC.encode if body is BodyFormat.MSGPACK else msgspec.json.encode
    last = publish(natsd.url, [encode(e) for e in events])
    store = InMemoryOnlineStore(views, spec.entities)
    w = worker(views, store, natsd.url, spec.entities, spec.stream, body=body, batch=128,
               checkpoint=tmp_path / "ckpt").start()
    assert w.wait_applied(last, 60, committed=True), w.statistics()
    w.close()
    want, _ = reference(views, spec.entities, spec.stream, events)
    assert_same_rows(store, want, "ticks", "instrument")
    assert w.statistics()["events"]["applied"] == len(events)


class GatedStore(InMemoryOnlineStore):
    """Blocks the worker inside a flush once ``at`` events are applied (a batch in flight)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.processor: StreamProcessor | None = None
        self.at = 0
        self.reached, self.release = threading.Event(), threading.Event()

    def _gate(self) -> None:
        p = self.processor
        if p is not None and p.last_seq >= self.at and not self.reached.is_set():
            self.reached.set()
            assert self.release.wait(30)

    def write(self, view: str, key: Any, values: Any, event_ns: int | None = None) -> None:
        self._gate()
        super().write(view, key, values, event_ns)

    def write_many(self, view: str, keys: Sequence[Any], values: Any, event_ns: Any = None) -> None:
        self._gate()
        super().write_many(view, keys, values, event_ns)


@pytest.mark.parametrize("per_message", [1, 10])
def test_nats_down_mid_batch_then_back_loses_and_double_counts_nothing(
        natsd: NatsServer, tmp_path: Path, per_message: int) -> None:
    views = counting(tmp_path)
    first = [{"user": f"u{i % 7}", "id": i, "ts_ns": 1000 + i, "x": float(i % 5)} for i in range(2000)]
    second = [{"user": f"u{i % 7}", "id": i, "ts_ns": 1000 + i, "x": float(i % 5)} for i in range(2000, 3000)]
    publish(natsd.url, bodies(first, per_message))
    store = GatedStore(views, USERS)
    w = worker(views, store, natsd.url, USERS, COUNT_STREAM, batch=50 // per_message,
               checkpoint=tmp_path / "ckpt")
    store.processor, store.at = w.processor, 700 // per_message
    w.start()
    assert store.reached.wait(30)
    natsd.kill()  # the batch being flushed is delivered, applied, not yet acknowledged
    store.release.set()
    eventually(lambda: w.failures >= 1 and not w.connected)
    natsd.start()
    last = publish(natsd.url, bodies(second, per_message))
    assert w.wait_applied(last, 60, committed=True), w.statistics()
    w.close()
    stats = w.statistics()
    assert stats["connects"] >= 2
    assert stats["events"]["applied"] == 3000
    want, _ = reference(views, USERS, COUNT_STREAM, first + second)
    assert_same_rows(store, want, "counts", "user")
    assert sum(float(store.read("counts", f"u{u}")[1]) for u in range(7)) == 3000.0


def test_a_restarted_worker_resumes_from_its_checkpoint(natsd: NatsServer, tmp_path: Path) -> None:
    spec, views = trading()
    events = ticks(20.0)
    half = len(events) // 2
    ckpt = tmp_path / "state" / "ingest.ckpt"
    mid = publish(natsd.url, [ENC.encode(e) for e in events[:half]])
    a = worker(views, InMemoryOnlineStore(views, spec.entities), natsd.url, spec.entities, spec.stream,
               checkpoint=ckpt, checkpoint_interval_s=3600.0).start()
    assert a.wait_applied(mid, 60, committed=True)
    a.close()
    last = publish(natsd.url, [ENC.encode(e) for e in events[half:]])
    store = InMemoryOnlineStore(views, spec.entities)  # a new process: an empty store
    b = worker(views, store, natsd.url, spec.entities, spec.stream, checkpoint=ckpt)
    assert b.restored is not None and b.restored.last_seq == mid
    asyncio.run(b.run(until_idle=True))
    assert b.processor.last_seq == last
    assert b.messages == len(events) - half  # only what came after the checkpoint was delivered
    assert b.statistics()["events"]["applied"] == len(events)
    want, _ = reference(views, spec.entities, spec.stream, events)
    assert_same_rows(store, want, "ticks", "instrument")


def cli(url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tailguard", "features", "ingest", str(TRADING), "--nats", url,
            "--stream", STREAM, "--subject", SUBJECT, *extra]


@pytest.mark.parametrize("per_message", [1, 4])
def test_a_worker_killed_mid_stream_resumes_without_loss_or_double_count(
        natsd: NatsServer, tmp_path: Path, per_message: int) -> None:
    spec, views = trading()
    events = ticks(20.0)
    last = publish(natsd.url, bodies(events, per_message))
    ckpt = tmp_path / "ingest.ckpt"
    at = 300 // per_message
    # One message per batch, a checkpoint each: slow enough to be killed in the middle.
    proc = subprocess.Popen(cli(natsd.url, "--checkpoint", str(ckpt), "--checkpoint-interval-s", "0",
                                "--batch", "1"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        eventually(lambda: (h := read_header(ckpt)) is not None and h.last_seq >= at, 60)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    header = read_header(ckpt)
    assert header is not None and at <= header.last_seq < last
    store = InMemoryOnlineStore(views, spec.entities)
    b = worker(views, store, natsd.url, spec.entities, spec.stream, checkpoint=ckpt)
    asyncio.run(b.run(until_idle=True))
    assert b.processor.last_seq == last
    assert b.statistics()["events"]["applied"] == len(events)
    want, _ = reference(views, spec.entities, spec.stream, events)
    assert_same_rows(store, want, "ticks", "instrument")


async def dead_letters(url: str) -> list[tuple[dict[str, str], bytes]]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    n = (await js.stream_info("DEAD")).state.messages
    out = []
    for seq in range(1, n + 1):
        m = await js.get_msg("DEAD", seq)
        out.append((dict(m.headers or {}), m.data or b""))
    await nc.close()
    return out


def test_poison_events_go_to_the_dead_letter_subject_and_ingest_goes_on(
        natsd: NatsServer, tmp_path: Path) -> None:
    views = counting(tmp_path)
    good = [{"user": "a", "id": i, "ts_ns": 10 + i, "x": 1.0} for i in range(4)]
    poison = [
        (b"\xc1\xc1", "decode"),  # not MessagePack
        (ENC.encode([1, 2, 3]), "decode"),  # not a map
        (ENC.encode({"user": "a", "id": 90, "ts_ns": 20, "x": "abc"}), "wrong_type"),
        (ENC.encode({"user": "a", "id": 91, "x": 1.0}), "missing_field"),
        (ENC.encode({"id": 92, "ts_ns": 21, "x": 1.0}), "missing_field"),  # no entity key
        (ENC.encode({"user": "a", "id": 93, "ts_ns": 22, "x": float("nan")}), "not_finite"),
    ]
    bodies = [ENC.encode(good[0]), *(b for b, _ in poison[:3]), ENC.encode(good[1]),
              *(b for b, _ in poison[3:]), ENC.encode(good[2]), ENC.encode(good[3])]
    last = publish(natsd.url, bodies)
    store = InMemoryOnlineStore(views, USERS)
    w = worker(views, store, natsd.url, USERS, COUNT_STREAM, dead_letter_subject=DEAD)
    asyncio.run(w.run(until_idle=True))
    assert w.processor.last_seq == last
    assert list(store.read("counts", "a")) == [4.0, 4.0]  # every good event, after the poison ones too
    got = asyncio.run(dead_letters(natsd.url))
    assert sorted((h["Tailguard-Reason"], body) for h, body in got) == sorted((r, b) for b, r in poison)
    assert all(h["Tailguard-Detail"] and h["Tailguard-Subject"] == SUBJECT for h, _ in got)
    stats = w.statistics()
    assert stats["dead_letters"] == {"decode": 2, "wrong_type": 1, "missing_field": 2, "not_finite": 1}
    assert stats["events"]["decode"] == 2 and stats["events"]["missing_field"] == 2
    assert stats["events"]["applied"] == 4


def test_batch_bodies_give_the_rows_of_applying_the_same_events_in_process(
        natsd: NatsServer, tmp_path: Path) -> None:
    spec, views = trading()
    events = ticks(20.0)
    third = len(events) // 3
    # Plain maps, then batches of 64, then a ragged tail: one stream, both body forms.
    publish(natsd.url, bodies(events[:third]))
    last = publish(natsd.url, bodies(events[third:], 64))
    store = InMemoryOnlineStore(views, spec.entities)
    w = worker(views, store, natsd.url, spec.entities, spec.stream, batch=16, checkpoint=tmp_path / "ckpt")
    asyncio.run(w.run(until_idle=True))
    assert w.processor.last_seq == last and w.messages == last
    want, _ = reference(views, spec.entities, spec.stream, events)
    assert_same_rows(store, want, "ticks", "instrument")
    assert w.statistics()["events"]["applied"] == len(events)


def test_a_poison_event_in_a_batch_is_dead_lettered_alone_and_the_rest_applied(
        natsd: NatsServer, tmp_path: Path) -> None:
    views = counting(tmp_path)
    bad = {"user": "a", "id": 3, "ts_ns": 13, "x": "abc"}
    batch = [{"user": "a", "id": 1, "ts_ns": 11, "x": 1.0}, {"user": "a", "id": 2, "ts_ns": 12, "x": 1.0},
             bad, {"user": "a", "id": 4, "ts_ns": 14, "x": 1.0}]
    not_maps = ENC.encode([{"user": "a", "id": 5, "ts_ns": 15, "x": 1.0}, 7])  # undecodable as a whole
    last = publish(natsd.url, [ENC.encode(batch), not_maps, ENC.encode([{"user": "a", "id": 6, "ts_ns": 16,
                                                                         "x": 1.0}])])
    store = InMemoryOnlineStore(views, USERS)
    w = worker(views, store, natsd.url, USERS, COUNT_STREAM, dead_letter_subject=DEAD)
    asyncio.run(w.run(until_idle=True))
    assert w.processor.last_seq == last
    assert list(store.read("counts", "a")) == [4.0, 4.0]  # the batch's three good events and the last
    got = sorted(asyncio.run(dead_letters(natsd.url)), key=lambda hb: hb[0]["Tailguard-Stream-Seq"])
    assert [(h["Tailguard-Reason"], h["Tailguard-Stream-Seq"], h.get("Tailguard-Index")) for h, _ in got] == [
        ("wrong_type", "1", "2"), ("decode", "2", None)]
    assert got[0][1] == ENC.encode(bad) and got[1][1] == not_maps  # the event alone; the body as received
    assert w.statistics()["events"]["applied"] == 4 and w.statistics()["dead_letters"] == {
        "wrong_type": 1, "decode": 1}


def test_repeated_event_ids_are_counted_and_applied_once(natsd: NatsServer, tmp_path: Path) -> None:
    views = counting(tmp_path)
    events = [{"user": "a", "id": i % 10, "ts_ns": 100 + i, "x": 1.0} for i in range(25)]
    last = publish(natsd.url, [ENC.encode(e) for e in events])
    store = InMemoryOnlineStore(views, USERS)
    w = worker(views, store, natsd.url, USERS, COUNT_STREAM)
    asyncio.run(w.run(until_idle=True))
    assert w.processor.last_seq == last
    assert list(store.read("counts", "a")) == [10.0, 10.0]
    assert w.statistics()["events"]["duplicate"] == 15


def test_a_checkpoint_of_another_view_version_is_refused(natsd: NatsServer, tmp_path: Path) -> None:
    views = counting(tmp_path)
    publish(natsd.url, [ENC.encode({"user": "a", "id": 1, "ts_ns": 1, "x": 1.0})])
    ckpt = tmp_path / "ckpt"
    w = worker(views, InMemoryOnlineStore(views, USERS), natsd.url, USERS, COUNT_STREAM, checkpoint=ckpt)
    asyncio.run(w.run(until_idle=True))
    changed = compile_agg(tmp_path / "v2", (COUNT,), AGG_MODULE + "\n# edited\n")
    with pytest.raises(FeatureError, match="version changed"):
        worker(changed, InMemoryOnlineStore(changed, USERS), natsd.url, USERS, COUNT_STREAM, checkpoint=ckpt)


def test_the_cli_ingests_until_idle_and_prints_statistics(natsd: NatsServer, tmp_path: Path) -> None:
    events = ticks(5.0, n_instruments=2)
    publish(natsd.url, [ENC.encode(e) for e in events])
    out = subprocess.run(cli(natsd.url, "--checkpoint", str(tmp_path / "c"), "--until-idle", "--json"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    stats = msgspec.json.decode(out.stdout.strip().splitlines()[-1])
    assert stats["events"]["applied"] == len(events) and stats["committed_seq"] == len(events)


def test_stream_sequence_from_v1_and_v2_reply_subjects() -> None:
    assert stream_seq("$JS.ACK.EVENTS.c.1.42.7.1700000000000000000.3") == 42
    assert stream_seq("$JS.ACK.dom.acchash.EVENTS.c.1.42.7.1700000000000000000.3.rand") == 42
