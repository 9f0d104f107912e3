"""The trading example fed by the ingest worker: ticks published on NATS JetStream by
``examples/trading/publish.py``, consumed by ``tailguard features ingest --store redis://...``,
land in Redis with the same feature values, bit for bit, as the in-process
``StreamProcessor`` computes from the same ticks."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest
from services import NatsServer, RedisServer, running_nats, running_redis

from tailguard.features.online.codec import KeyLayout, decode_values
from tailguard.features.online.protocol import field_name
from tailguard.features.store import InMemoryOnlineStore
from tailguard.features.stream import StreamProcessor
from tailguard.features.transforms import load_module
from tailguard.features.view import compile_views
from tailguard.spec import load_spec

pytest.importorskip("nats")
redis = pytest.importorskip("redis")

TRADING = Path(__file__).resolve().parents[2] / "examples" / "trading"


@pytest.fixture
def natsd(tmp_path: Path) -> Iterator[NatsServer]:
    with running_nats(tmp_path / "jetstream") as server:
        yield server


@pytest.fixture
def redisd(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path) as server:
        yield server


def test_ticks_through_nats_and_the_ingest_worker_land_in_redis_bit_for_bit(
        natsd: NatsServer, redisd: RedisServer, tmp_path: Path) -> None:
    pub = load_module(str(TRADING), "publish")
    events = pub.tick_events(20.0, n_instruments=4, seed=7)
    last = asyncio.run(pub.publish(natsd.url, events, per_message=32))
    assert last == -(-len(events) // 32)
    out = subprocess.run(
        [sys.executable, "-m", "tailguard", "features", "ingest", str(TRADING), "--nats", natsd.url,
         "--stream", "TICKS", "--subject", "ticks", "--store", redisd.url, "--checkpoint",
         str(tmp_path / "ingest.ckpt"), "--until-idle", "--json"],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    stats = msgspec.json.decode(out.stdout.strip().splitlines()[-1])
    assert stats["events"]["applied"] == len(events) and stats["committed_seq"] == last

    spec = load_spec(TRADING)
    views = compile_views(spec.feature_views, str(TRADING))
    want = InMemoryOnlineStore(views, spec.entities)
    proc = StreamProcessor(views, want, spec.stream, entities=spec.entities)
    for ev in events:
        assert proc.process(ev) is None
    ticks = views["ticks"]
    layout = KeyLayout(spec.name, spec.entities)
    client = redis.Redis.from_url(redisd.url)
    try:
        symbols = want.keys("instrument")
        raws = [client.hget(layout.key("instrument", s), field_name("ticks", ticks.version)) for s in symbols]
    finally:
        client.close()
    assert len(symbols) == 4 and all(r is not None for r in raws)
    got = decode_values(raws, len(ticks.spec.fields))
    table = want.table("ticks")
    rows = [want.row("instrument", s) for s in symbols]
    assert got["values"].tobytes() == np.ascontiguousarray(table.f32[rows]).tobytes()  # bit for bit
    assert got["event_ns"].tolist() == table.event_ns[rows].tolist()
