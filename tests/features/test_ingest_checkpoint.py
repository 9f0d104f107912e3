"""The ingest checkpoint file: the processor's snapshot written atomically and restored
(format 2), format-1 files still read, files of another stream or consumer refused."""

from __future__ import annotations

import pickle
from pathlib import Path

import msgspec
import pytest
from streamkit import USERS, compile_agg, sum_view

from tailguard.errors import FeatureError
from tailguard.features.ingest_checkpoint import (
    MAGIC,
    CheckpointHeader,
    load_checkpoint,
    read_header,
    write_checkpoint,
)
from tailguard.features.store import InMemoryOnlineStore
from tailguard.features.stream import StreamProcessor
from tailguard.features.view import FeatureView
from tailguard.spec import StreamSpec

COUNT = sum_view("counts")
CONFIG = StreamSpec(event_id="id")


def views(tmp_path: Path) -> dict[str, FeatureView]:
    return compile_agg(tmp_path, (COUNT,))


def fed(vs: dict[str, FeatureView]) -> StreamProcessor:
    p = StreamProcessor(vs, InMemoryOnlineStore(vs, USERS), CONFIG, entities=USERS, write_through=False)
    for i in range(10):
        p.process({"user": f"u{i % 3}", "id": i, "ts_ns": 100 + i, "x": float(i)}, seq=i + 1)
    return p


def test_a_written_checkpoint_restores_the_processor(tmp_path: Path) -> None:
    vs = views(tmp_path)
    ckpt = tmp_path / "state" / "c.ckpt"
    write_checkpoint(ckpt, fed(vs), vs, stream="S", durable="d", subject="s", wall_ns=123)
    assert ckpt.read_bytes().startswith(MAGIC)
    header = read_header(ckpt)
    assert header is not None and (header.last_seq, header.written_wall_ns) == (10, 123)
    store = InMemoryOnlineStore(vs, USERS)
    q = StreamProcessor(vs, store, CONFIG, entities=USERS, write_through=False)
    assert load_checkpoint(ckpt, q, vs, stream="S", durable="d") == header
    assert q.flush() == 3 and list(store.read("counts", "u1")) == [1.0 + 4.0 + 7.0, 3.0]
    assert q.process({"user": "u1", "id": 9, "ts_ns": 200, "x": 1.0}) is not None  # a remembered id
    assert q.statistics() == {**fed(vs).statistics(), "duplicate": 1}


def test_a_format_1_checkpoint_is_still_read(tmp_path: Path) -> None:
    vs = views(tmp_path)
    snap = fed(vs).snapshot()
    states, last_ts = snap.views["counts"].states, snap.views["counts"].last_ts
    plain = ("applied", "ignored", "late_applied", "dead_lettered", "states_reset")
    v1 = {"routes": {"counts": (states, last_ts)}, "ids": list(snap.event_ids), "max_ts_ns": snap.max_ts_ns,
          "last_seq": snap.last_seq, "counters": {k: snap.counters[k] for k in plain},
          "rejected": {k: v for k, v in snap.counters.items() if k not in plain}}
    header = CheckpointHeader(stream="S", durable="d", subject="s", last_seq=snap.last_seq,
                              versions={"counts": vs["counts"].version})
    ckpt = tmp_path / "old.ckpt"
    ckpt.write_bytes(b"TGCKPT1\n" + msgspec.json.encode(header) + b"\n" + pickle.dumps(v1))
    q = StreamProcessor(vs, InMemoryOnlineStore(vs, USERS), CONFIG, entities=USERS)
    load_checkpoint(ckpt, q, vs, stream="S", durable="d")
    assert q.snapshot() == snap


def test_the_checkpoint_of_another_consumer_is_refused(tmp_path: Path) -> None:
    vs = views(tmp_path)
    ckpt = tmp_path / "c.ckpt"
    write_checkpoint(ckpt, fed(vs), vs, stream="S", durable="d", subject="s")
    q = StreamProcessor(vs, InMemoryOnlineStore(vs, USERS), CONFIG, entities=USERS)
    with pytest.raises(FeatureError, match="consumer"):
        load_checkpoint(ckpt, q, vs, stream="S", durable="other")
    assert q.last_seq == 0
