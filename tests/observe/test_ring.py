"""The shared-memory decision ring: compiled and Python writers, the reader, another process.

A real toy service decides; the compiled writer, the Python writer and a ``DecisionTap`` are
its hooks at once, so all three see the same decisions with the same engine buffers.  Keys the
toy's str entity cannot take (ints, tuples, mappings, over-long or odd keys) are the engine's
own decisions re-keyed (``msgspec.structs.replace``) and passed to the hooks right after the
call, while the engine's feature row is still that call's."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from toyservice import CTX, feed

from tailguard import Service, load_service
from tailguard.decision import BatchDecision, Decision, Flag
from tailguard.observe import ringbuild
from tailguard.observe.ring import DecisionRing, RingLayout, RingReader, compile_writer
from tailguard.observe.tap import DecisionTap

KEYS = [f"k{i}" for i in range(5)]
#: Keys that round-trip exactly (a tuple comes back a tuple, a mapping a mapping).
ODD_KEYS: list[Any] = [12345, -(2**63), 2**63 - 1, 2**63, ("a", 7), {"item": "a", "user": 3}, True,
                       "ünïcode", "x" * 64, "x" * 65, "é" * 40, ("long", "t" * 80), None, 1.5]


@pytest.fixture(autouse=True)
def ring_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiled writers go to a per-session cache, not the user's."""
    base = tmp_path_factory.getbasetemp() / "ring-cache"
    monkeypatch.setenv("TAILGUARD_CACHE_DIR", str(base))
    monkeypatch.delenv("TAILGUARD_NO_COMPILE", raising=False)


def need_compiled() -> None:
    module, reason = compile_writer()
    if module is None:
        if reason.startswith("no C compiler"):
            pytest.skip(reason)
        pytest.fail(f"the ring writer did not compile: {reason}")


def rings(service: Service, capacity: int, **kw: Any) -> tuple[DecisionRing, DecisionRing]:
    need_compiled()
    c = DecisionRing(service.engine, capacity, **kw)
    p = DecisionRing(service.engine, capacity, compiled=False, **kw)
    assert c.compiled and c.fallback_reason == ""
    assert not p.compiled and p.fallback_reason == "compiled=False"
    return c, p


def rekeyed(service: Service, key: Any) -> Decision:
    """A real decision for ``a`` (made with the hooks off), re-keyed and given to the hooks right
    after the call, as the engine would."""
    eng = service.engine
    hooks = eng.hooks
    eng.set_hooks([])
    d = msgspec.structs.replace(eng.predict("a", CTX), key=key)
    eng.set_hooks(hooks)
    eng._emit_one(d)
    return d


def scenario(service: Service) -> list[Decision | BatchDecision]:
    """Decisions of every kind the hooks must keep: two model versions and the default rung,
    two priorities, unknown entities, odd keys, batches (one large enough to replace the
    engine's and the assembler's buffers), and singles after it."""
    eng = service.engine
    feed(service, "a")
    feed(service, "b")
    out: list[Decision | BatchDecision] = [
        eng.predict("a", CTX),
        eng.predict("zz", CTX),  # unknown entity
        eng.predict("b", CTX, start_rung=1),  # the second model version
        eng.predict("a", CTX, priority="critical"),
        eng.predict("b", CTX, start_rung=3),  # the default rung: no model version
    ]
    out += [rekeyed(service, k) for k in ODD_KEYS]
    out.append(eng.predict_batch(["a", "b", "zz"], CTX))
    out.append(eng.predict_batch(np.array(KEYS), CTX, start_rung=1, priority="bulk"))
    wide, written = eng._wide_row, eng.assembler._written_row
    big = [f"n{i}" for i in range(eng._wide.shape[0])] + ["y" * 100]
    out.append(eng.predict_batch(big, CTX))  # larger than the engine's and the assembler's buffers
    assert eng._wide_row is not wide and eng.assembler._written_row is not written
    out += [eng.predict("a", CTX), eng.predict("q" * 90, CTX)]
    return out


def assert_same(got: Any, want: Any) -> None:
    """Two decisions equal bit for bit (a batch's keys compared as a list)."""
    assert type(got) is type(want)
    assert got.outputs.dtype == want.outputs.dtype and got.outputs.tobytes() == want.outputs.tobytes()
    for f in ("output_names", "model_version", "priority", "timings_ns"):
        assert getattr(got, f) == getattr(want, f), f
    if isinstance(want, Decision):
        assert type(got.key) is type(want.key) and got.key == want.key
        assert (got.rung, got.rung_index, got.flags) == (want.rung, want.rung_index, want.flags)
    else:
        assert got.keys == list(want.keys.tolist() if isinstance(want.keys, np.ndarray) else want.keys)
        assert got.rung_names == want.rung_names
        assert got.rungs.dtype == want.rungs.dtype and np.array_equal(got.rungs, want.rungs)
        assert got.flags.dtype == want.flags.dtype and np.array_equal(got.flags, want.flags)


def entries(r: DecisionRing, start: int = 0) -> list[tuple[Any, ...]]:
    rd = r.reader()
    eng = r.engine
    return rd.decode(rd.read(start, rd.head()), r.versions, r.priorities, eng.output_names, eng.rung_names,
                     r.spilled)


def test_compiled_and_python_writers_write_the_same_bytes(service: Service) -> None:
    c, p = rings(service, 2048)
    service.engine.set_hooks([c, p])
    ds = scenario(service)
    n = sum(len(d) if isinstance(d, BatchDecision) else 1 for d in ds)
    assert c.head == p.head == n and c.errors == p.errors == 0
    assert bytes(c._mm) == bytes(p._mm)
    assert (c.versions, c.priorities, c.spilled) == (p.versions, p.priorities, p.spilled)
    assert set(c.versions) == {"primary/1", "fast/1", ""}
    assert set(c.priorities) == {"normal", "critical", "bulk"}
    assert c.spilled  # the over-long keys
    recs = c.reader().records(0, n)
    kinds = recs["key_kind"].tolist()
    assert {0, 1, 2, 3} <= set(kinds)
    assert recs["position"].tolist() == list(range(n))


def test_decoded_entries_equal_the_decisions_and_the_taps_entries(service: Service) -> None:
    c, p = rings(service, 2048)
    tap = DecisionTap(service.engine, 256)
    service.engine.set_hooks([c, p, tap])
    ds = scenario(service)
    for r in (c, p):
        got = entries(r)
        assert len(got) == len(ds)
        for e, d, t in zip(got, ds, tap.slots, strict=False):
            assert_same(e[0], d)
            assert t[0] is d
            assert e[1:] == t[1:]  # features bytes, written bytes, filled_ns, rows
    unknown = entries(c)[1][0]
    assert unknown.flags & Flag.UNKNOWN_ENTITY and unknown.key == "zz"


def test_keys_msgpack_cannot_take_never_raise_and_are_kept_as_their_repr(service: Service) -> None:
    c, p = rings(service, 16)
    service.engine.set_hooks([c, p])
    feed(service, "a")
    odd = [2**70, object(), "\udc80", np.int64(5), (1, np.float32(2.5))]
    for k in odd:
        rekeyed(service, k)
    assert c.head == p.head == len(odd) and c.errors == p.errors == 0
    assert bytes(c._mm) == bytes(p._mm)
    keys = [e[0].key for e in entries(c)]
    assert keys[0] == str(2**70) and keys[2] == repr("\udc80")
    assert keys[3] == 5 and keys[4] == (1, 2.5)


def test_a_decision_the_writers_cannot_read_is_counted_not_raised(service: Service) -> None:
    c, p = rings(service, 8)
    feed(service, "a")
    d = service.engine.predict("a", CTX)
    for r in (c, p):
        r.on_decision(object())  # type: ignore[arg-type]
        r.on_batch(object())  # type: ignore[arg-type]
        assert r.head == 0 and r.errors == 2
        # fields of the wrong type are written as zeros rather than refused
        r.on_decision(msgspec.structs.replace(d, outputs="not numbers"))
        r.on_decision(msgspec.structs.replace(d, timings_ns=None))
        assert r.head == 2 and r.errors == 2
    assert bytes(c._mm) == bytes(p._mm)
    e = entries(c)
    assert e[0][0].outputs.tolist() == [0.0] and e[1][0].timings_ns == (0, 0, 0, 0, 0)


def read_all(rd: RingReader, start: int, stop: int) -> list[np.ndarray]:
    """The contiguous runs from ``start`` to ``stop``, as a reader loops over them."""
    runs = []
    while start < stop:
        run = rd.records(start, stop)
        runs.append(run.copy())
        start += len(run)
    return runs


@pytest.mark.parametrize("compiled", [True, False])
def test_records_wrap_around_the_ring_end(service: Service, compiled: bool) -> None:
    if compiled:
        need_compiled()
    r = DecisionRing(service.engine, 8, compiled=compiled)
    tap = DecisionTap(service.engine, 64)
    service.engine.set_hooks([r, tap])
    rd = r.reader()
    feed(service, "a")
    pos = 0
    got: list[tuple[Any, ...]] = []
    for round_ in range(4):
        for i in range(2):
            service.engine.predict(f"k{round_}{i}", CTX)
        service.engine.predict_batch(["a", "b", "c"], CTX)  # crosses the end on some rounds
        head = rd.head()
        runs = read_all(rd, pos, head)
        assert sum(map(len, runs)) == head - pos == 5
        recs = np.concatenate(runs)
        assert recs["position"].tolist() == list(range(pos, head))
        got += rd.decode(recs, r.versions, r.priorities, service.engine.output_names,
                         service.engine.rung_names)
        rd.advance(head)
        pos = head
    assert len(runs) == 2  # the last round's run was cut at the ring's end
    assert r.dropped == 0 and len(got) == tap.head == 12
    for e, t in zip(got, tap.slots, strict=False):
        assert_same(e[0], t[0])
        assert e[1:] == t[1:]


@pytest.mark.parametrize("compiled", [True, False])
def test_a_full_ring_drops_and_the_next_record_says_how_many(service: Service, compiled: bool) -> None:
    if compiled:
        need_compiled()
    r = DecisionRing(service.engine, 4, compiled=compiled)
    service.engine.set_hooks([r])
    rd = r.reader()
    for i in range(6):
        service.engine.predict(f"k{i}", CTX)
    assert (r.head, r.dropped, rd.dropped()) == (4, 2, 2)
    rd.advance(1)  # one slot free: a batch of two does not fit and is dropped whole
    service.engine.predict_batch(["a", "b"], CTX)
    assert (r.head, r.dropped) == (4, 4)
    service.engine.predict("k9", CTX)
    last = rd.records(4, 5)[0]
    assert (int(last["position"]), int(last["dropped_before"])) == (4, 4)
    assert entries(r, 4)[0][0].key == "k9"
    rd.advance(5)
    service.engine.predict_batch(["a", "b"], CTX)
    recs = rd.read(5, 7)
    assert recs["dropped_before"].tolist() == [0, 0] and recs["batch_rows"].tolist() == [2, 2]
    assert r.head == 7 and r.dropped == 4


CHILD = textwrap.dedent("""
    import json, sys
    from tailguard.observe.ring import RingReader
    fd, meta = int(sys.argv[1]), json.loads(sys.argv[2])
    rd = RingReader(fd)
    head = rd.head()
    recs = rd.read(0, head)
    out = rd.decode(recs, meta["versions"], meta["priorities"], meta["names"], meta["rungs"])
    rd.advance(head)
    print(json.dumps({"head": head, "raw": recs.tobytes().hex(), "entries": [
        [repr(e[0].key) if e[4] == 0 else repr(e[0].keys), e[0].outputs.tobytes().hex(), e[1].hex(),
         e[2].hex(), e[3], e[4], e[0].model_version, e[0].priority] for e in out]}))
""")


@pytest.mark.parametrize("compiled", [True, False])
def test_a_child_process_maps_the_fd_and_reads_the_same_records(service: Service, compiled: bool) -> None:
    if compiled:
        need_compiled()
    r = DecisionRing(service.engine, 64, compiled=compiled)
    service.engine.set_hooks([r])
    feed(service, "a")
    ds: list[Any] = [service.engine.predict(k, CTX) for k in ("a", "zz", "b")]
    ds.append(service.engine.predict_batch(KEYS, CTX))
    ds.append(rekeyed(service, ("t", 1)))
    eng = service.engine
    meta = {"versions": r.versions, "priorities": r.priorities, "names": eng.output_names,
            "rungs": eng.rung_names}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", CHILD, str(r.fd), json.dumps(meta)], pass_fds=[r.fd],
                         capture_output=True, text=True, timeout=120, env=env, check=True)
    child = json.loads(out.stdout.strip().splitlines()[-1])
    mine = entries(r)
    assert child["head"] == r.head == 9
    assert bytes.fromhex(child["raw"]) == r.reader().read(0, r.head).tobytes()
    want = [[repr(e[0].key) if e[4] == 0 else repr(e[0].keys), e[0].outputs.tobytes().hex(), e[1].hex(),
             e[2].hex(), e[3], e[4], e[0].model_version, e[0].priority] for e in mine]
    assert child["entries"] == want
    assert r.reader().consumed() == 9  # the child's advance reached the writer


def test_without_compiling_the_python_writer_runs_and_says_why(service: Service,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILGUARD_NO_COMPILE", "1")
    r = DecisionRing(service.engine, 8)
    assert not r.compiled and "TAILGUARD_NO_COMPILE" in r.fallback_reason
    service.engine.set_hooks([r])
    d = service.engine.predict("a", CTX)
    assert r.head == 1
    assert_same(entries(r)[0][0], d)


def test_the_writer_compiles_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need_compiled()
    monkeypatch.setenv("TAILGUARD_CACHE_DIR", str(tmp_path))
    module, reason = compile_writer()
    assert module is not None and reason == ""
    built = list(tmp_path.glob("_ringwriter-*"))
    assert len(built) == 1 and built[0].name.endswith(str(sysconfig.get_config_var("EXT_SUFFIX")))
    assert compile_writer()[0] is module
    assert list(tmp_path.iterdir()) == built  # no temporary files left


def test_processes_compiling_at_once_all_get_the_writer(tmp_path: Path) -> None:
    need_compiled()
    code = "from tailguard.observe.ring import compile_writer as c; m, r = c(); print(m is not None, r)"
    env = dict(os.environ, TAILGUARD_CACHE_DIR=str(tmp_path), PYTHONPATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert outs == ["True"] * 4
    assert len(list(tmp_path.iterdir())) == 1


def test_a_compiler_failure_falls_back_with_the_reason(service: Service, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILGUARD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(ringbuild, "_compiler", lambda: None)
    r = DecisionRing(service.engine, 8)
    assert not r.compiled and r.fallback_reason.startswith("no C compiler")
    monkeypatch.setattr(ringbuild, "_compiler", lambda: ["false"])
    ringbuild._compiled.clear()
    r = DecisionRing(service.engine, 8)
    assert not r.compiled and "failed" in r.fallback_reason
    ringbuild._compiled.clear()


def test_the_layout_is_as_documented() -> None:
    lay = RingLayout(width=5, n_views=1, n_outputs=1, key_bytes=64)
    f = lay.record.fields
    assert f is not None
    offsets = {name: f[name][1] for name in lay.record.names or ()}
    assert offsets == {"position": 0, "filled_ns": 8, "timings_ns": 16, "flags": 56, "rung_index": 64,
                       "version": 66, "priority": 68, "key_len": 70, "key_kind": 72, "batch_rows": 76,
                       "batch_row": 80, "dropped_before": 84, "key": 88, "outputs": 152, "features": 160,
                       "written": 184}
    assert lay.itemsize == 192 and lay.itemsize % 8 == 0
    odd = RingLayout(width=3, n_views=2, n_outputs=2, key_bytes=13)
    assert (odd.o_outputs, odd.o_features, odd.o_written, odd.itemsize) == (104, 120, 136, 152)


@pytest.fixture
def ring_bytes(service: Service) -> Iterator[bytearray]:
    r = DecisionRing(service.engine, 8, compiled=False)
    service.engine.set_hooks([r])
    service.engine.predict("a", CTX)
    yield bytearray(r._mm)


def test_a_header_that_does_not_match_is_a_clear_error(ring_bytes: bytearray) -> None:
    assert RingReader(ring_bytes).head() == 1
    bad = bytearray(ring_bytes)
    bad[:8] = b"NOTARING"
    with pytest.raises(ValueError, match="magic"):
        RingReader(bad)
    bad = bytearray(ring_bytes)
    bad[16:24] = (8).to_bytes(8, "little")  # record size
    with pytest.raises(ValueError, match="record size"):
        RingReader(bad)
    bad = bytearray(ring_bytes)
    bad[8:16] = (6).to_bytes(8, "little")  # capacity not a power of two
    with pytest.raises(ValueError, match="capacity"):
        RingReader(bad)
    with pytest.raises(ValueError, match=r"record size|capacity"):
        RingReader(ring_bytes[:-8])  # truncated
    with pytest.raises(ValueError):
        RingReader(bytearray(16))


def test_a_cut_batch_is_refused_by_decode(service: Service) -> None:
    r = DecisionRing(service.engine, 8, compiled=False)
    service.engine.set_hooks([r])
    service.engine.predict_batch(KEYS, CTX)
    rd = r.reader()
    with pytest.raises(ValueError, match="incomplete batch"):
        rd.decode(rd.records(0, 3), r.versions, r.priorities, ("p",), service.engine.rung_names)


def test_an_engine_and_its_compiled_ring_are_collected_together(toy_dir: Path) -> None:
    """engine -> hooks -> ring -> compiled writer -> engine is a cycle the collector must see."""
    need_compiled()
    svc = load_service(toy_dir, freeze_gc=False)
    r = DecisionRing(svc.engine, 8)
    svc.engine.set_hooks([r])
    svc.engine.predict("a", CTX)
    engine, ring = weakref.ref(svc.engine), weakref.ref(r)
    svc.close()
    del svc, r
    gc.collect()
    assert engine() is None and ring() is None


def test_a_feed_writes_another_engines_decisions_with_its_own_rows(service: Service) -> None:
    """A canary's engine (``tailguard.rollout``: same store and assembler, its own buffers)
    writes into the same ring through ``feed``: one sequence of positions, its own rows."""
    from tailguard.engine import Engine

    need_compiled()
    eng = service.engine
    ring = DecisionRing(eng, 64)
    other = Engine(store=eng.store, assembler=eng.assembler, rungs=eng.rungs, output_names=eng.output_names,
                   priorities=service.spec.priorities, default_priority=service.spec.default_priority,
                   clock=eng.clock)
    feed_hook = ring.feed(other)
    eng.set_hooks([ring])
    other.set_hooks([feed_hook])
    feed(service, "a")
    feed(service, "b")
    made = []
    for i, e in enumerate([eng, other, eng, other]):
        d = e.predict("a" if i % 2 else "b", {**CTX, "price": 100.0 + i})
        made.append((d, e.last_features(1).tobytes()))
    b = other.predict_batch(["a", "b"], CTX)
    got = entries(ring)
    assert ring.head == 6 and len(got) == 5
    for (d, feats), e in zip(made, got, strict=False):
        assert_same(e[0], d)
        assert e[1] == feats
    assert_same(got[4][0], b) and got[4][4] == 2
    ring.close()
    narrow = type("A", (), {"width": 1, "stored_views": ()})()
    odd = type("E", (), {"assembler": narrow, "output_names": ("p",)})()
    with pytest.raises(ValueError):  # another layout cannot share the ring
        DecisionRing(eng, 64).feed(odd)
