"""Feast's side of benchmarks/features.py: run with ``.venv-feast/bin/python`` (Feast and tailguard
never share a virtual environment), driven over stdin/stdout by the benchmark (``FeastSide``,
the benchmark's end of the pipe, lives here too: it needs nothing but the standard library).

It creates a Feast repository in ``--workdir`` (``feature_store.yaml`` with the Redis online store
on the benchmark's own redis-server, a local file registry cached forever), applies the entities
``user`` and ``item`` and the feature views ``user_profile``, ``user_activity`` and ``item_stats``
(float32 fields, the same names and values tailguard's side writes, read from ``--data``, an
``.npz`` the benchmark wrote), writes the rows with ``FeatureStore.write_to_online_store`` and
then answers one JSON command per stdin line with one JSON line on stdout:

* ``{"cmd": "block", "series": S, "calls": n}``: time ``n`` calls of series ``S`` with
  ``time.perf_counter_ns`` around ``get_online_features(...).to_dict()`` (the values in hand,
  as a caller needs them), each on the next pre-drawn batch of random entity keys; replies
  ``{"ns": [...]}``.  Series: ``feast_one_entity`` (one user, both user views) and
  ``feast_<N>`` (N items, the item view);
* ``{"cmd": "check", "series": S, "keys": [...]}``: the values read for those keys (for the
  benchmark's cross-check against tailguard's reads and the source arrays);
* ``{"cmd": "quit"}``.

The benchmark alternates these blocks with its own series, so the same machine noise falls on
both; this process sleeps on stdin in between.  Entity rows go in columnar form
(``{"item_id": [...]}``), the cheaper of the two forms Feast takes.  Everything Feast or its
dependencies print goes to stderr: stdout carries the JSON replies only.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

#: Entity counts of the item series (``feast_<N>``).
FEAST_SIZES = (1, 10, 100, 500)

VIEWS = {  # view -> (entity, join key, field prefix); widths come from the data file
    "user_profile": ("user", "user_id", "u"),
    "user_activity": ("user", "user_id", "a"),
    "item_stats": ("item", "item_id", "i"),
}
CHUNK = 20_000  # rows per write_to_online_store call while loading


def write_repo(workdir: Path, redis_addr: str) -> None:
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    (workdir / "feature_store.yaml").write_text(
        "project: featbench\n"
        "provider: local\n"
        "registry:\n"
        f"  path: {workdir / 'data' / 'registry.db'}\n"
        "  cache_ttl_seconds: 0\n"  # 0: load once, never refresh (no registry reads on the read path)
        "online_store:\n"
        "  type: redis\n"
        f"  connection_string: \"{redis_addr}\"\n"
        "  skip_dedup: true\n"  # writes only: one pipeline per load chunk
        "offline_store:\n"
        "  type: file\n"
        "entity_key_serialization_version: 3\n"
    )


def definitions(workdir: Path, widths: dict[str, int]) -> list[Any]:
    import pandas as pd
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float32

    entities = {
        "user": Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64),
        "item": Entity(name="item", join_keys=["item_id"], value_type=ValueType.INT64),
    }
    objs: list[Any] = list(entities.values())
    for name, (entity, join_key, prefix) in VIEWS.items():
        # The offline source is never read here; Feast wants one to exist for every view.
        path = workdir / "data" / f"{name}.parquet"
        cols = {join_key: [0], **{f"{prefix}{j}": [0.0] for j in range(widths[name])},
                "event_timestamp": [datetime.now(UTC)]}
        pd.DataFrame(cols).to_parquet(path)
        objs.append(FeatureView(
            name=name, entities=[entities[entity]], ttl=timedelta(days=3650),
            schema=[Field(name=f"{prefix}{j}", dtype=Float32) for j in range(widths[name])],
            source=FileSource(path=str(path), timestamp_field="event_timestamp"), online=True,
        ))
    return objs


def load(store: Any, data: dict[str, np.ndarray], log: Any) -> float:
    import pandas as pd

    t0 = time.perf_counter()
    now = datetime.now(UTC)
    for name, (_entity, join_key, prefix) in VIEWS.items():
        values = data[name]
        for lo in range(0, len(values), CHUNK):
            part = values[lo : lo + CHUNK]
            df = pd.DataFrame(part, columns=[f"{prefix}{j}" for j in range(part.shape[1])])
            df.insert(0, join_key, np.arange(lo, lo + len(part), dtype=np.int64))
            df["event_timestamp"] = now
            store.write_to_online_store(name, df)
        log(f"feast: wrote {len(values)} rows of {name}")
    return time.perf_counter() - t0


class Series:
    """One call shape: the feature references and a cycle of pre-drawn entity batches."""

    def __init__(self, store: Any, refs: list[str], join_key: str, n: int, n_keys: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.batches = [{join_key: rng.integers(0, n_keys, n).tolist()} for _ in range(256)]
        self.pos = 0
        self.store = store
        self.refs = refs
        self.join_key = join_key

    def block(self, calls: int) -> list[int]:
        get, refs, batches = self.store.get_online_features, self.refs, self.batches
        pc = time.perf_counter_ns
        out = []
        pos = self.pos
        for _ in range(calls):
            rows = batches[pos]
            pos = (pos + 1) % len(batches)
            t0 = pc()
            get(features=refs, entity_rows=rows).to_dict()
            out.append(pc() - t0)
        self.pos = pos
        return out

    def check(self, keys: list[int]) -> dict[str, list[Any]]:
        res = self.store.get_online_features(features=self.refs, entity_rows={self.join_key: keys}).to_dict()
        names = [r.split(":", 1)[1] for r in self.refs]
        return {"rows": [[res[f][i] for f in names] for i in range(len(keys))]}


def refs_of(data: dict[str, np.ndarray], *views: str) -> list[str]:
    return [f"{v}:{VIEWS[v][2]}{j}" for v in views for j in range(data[v].shape[1])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis", required=True, help="host:port of the benchmark's redis-server")
    ap.add_argument("--data", required=True, help=".npz with user_profile, user_activity, item_stats")
    ap.add_argument("--sizes", default=",".join(map(str, FEAST_SIZES)), help="item series entity counts")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    os.environ.setdefault("FEAST_USAGE", "False")
    reply_stream = sys.stdout
    sys.stdout = sys.stderr  # whatever Feast prints must not mix with the replies

    def log(*a: Any) -> None:
        print(*a, file=sys.stderr, flush=True)

    def reply(obj: dict[str, Any]) -> None:
        reply_stream.write(json.dumps(obj) + "\n")
        reply_stream.flush()

    import feast
    from feast import FeatureStore

    with np.load(args.data) as npz:
        data = {k: npz[k] for k in VIEWS}
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="feast-featbench-"))
    write_repo(workdir, args.redis)
    store = FeatureStore(repo_path=str(workdir))
    store.apply(definitions(workdir, {k: v.shape[1] for k, v in data.items()}))
    load_s = load(store, data, log)
    series = {"feast_one_entity": Series(store, refs_of(data, "user_profile", "user_activity"), "user_id",
                                         1, len(data["user_profile"]), args.seed)}
    for i, n in enumerate(int(s) for s in args.sizes.split(",")):
        series[f"feast_{n}"] = Series(store, refs_of(data, "item_stats"), "item_id", n,
                                      len(data["item_stats"]), args.seed + 1 + i)
    for s in series.values():  # the first calls load the registry and open connections
        s.block(3)
    gc.collect()
    gc.freeze()
    reply({"ready": True, "load_s": round(load_s, 2), "feast": feast.__version__,
           "python": sys.version.split()[0], "series": list(series), "workdir": str(workdir)})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "block":
            reply({"ns": series[cmd["series"]].block(int(cmd["calls"]))})
        elif cmd["cmd"] == "check":
            reply(series[cmd["series"]].check([int(k) for k in cmd["keys"]]))
        elif cmd["cmd"] == "quit":
            reply({"bye": True})
            return
        else:
            reply({"error": f"unknown command {cmd['cmd']!r}"})


class FeastSide:
    """The benchmark's end: this script in a subprocess, one JSON command and reply per line."""

    def __init__(self, python: Path, redis_addr: str, data: Path, workdir: Path, seed: int) -> None:
        self.proc = subprocess.Popen(
            [str(python), __file__, "--redis", redis_addr, "--data", str(data), "--workdir", str(workdir),
             "--sizes", ",".join(map(str, FEAST_SIZES)), "--seed", str(seed)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        self.hello = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the Feast side exited (code {self.proc.wait()}); see its stderr above")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def ask(self, **cmd: Any) -> dict[str, Any]:
        """Send one command, return its reply."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def series_run(self, name: str) -> Any:
        """A ``run(n, out, pos)`` for the benchmark's ``Series``: ``n`` calls timed over there."""
        def run(n: int, out: np.ndarray, pos: int) -> int:
            out[pos : pos + n] = self.ask(cmd="block", series=name, calls=n)["ns"]
            return 0
        return run

    def close(self) -> None:
        """Ask the subprocess to quit and reap it."""
        if self.proc.poll() is None:
            self.ask(cmd="quit")
            self.proc.wait(timeout=30)


if __name__ == "__main__":
    main()
