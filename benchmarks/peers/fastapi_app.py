"""What most users write first: FastAPI + uvicorn serving the trading model from its ONNX file.

One process (``--workers 1``), uvloop and httptools (uvicorn's fastest settings), access log
off.  ``POST /predict`` takes ``{"instrument", "bid", "ask", "bid_size", "ask_size"}`` (a
pydantic model), builds the model's 10 inputs -- the instrument's 8 stream features from an
in-memory dict (a fresh server knows no instrument, so they are the spec's defaults, 0.0, as
for tailguard's fresh store) and the quote's spread and imbalance -- runs ONNX Runtime (one
intra-op thread, no spinning: tailguard's session settings) and answers ``{"p_up": ...}``.
An ``async def`` endpoint: a plain ``def`` would add a thread-pool hop to every request.

Run: ``python benchmarks/peers/fastapi_app.py --model-dir DIR [--port 0] --ready-file PATH``
(``DIR`` is a model version directory holding ``manifest.json`` and ``model.onnx``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

N_STREAM = 8  # ticks.* features, in the manifest's input order, before the two quote features


class Quote(BaseModel):
    instrument: str
    bid: float
    ask: float
    bid_size: float
    ask_size: float


def create_app(model_dir: Path, on_ready: Callable[[], None] | None = None) -> FastAPI:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    art = next(a for a in manifest["artifacts"] if a["kind"] == "onnx")
    inputs = manifest["inputs"]
    assert [i.split(".")[0] for i in inputs] == ["ticks"] * N_STREAM + ["quote", "quote"], inputs
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(model_dir / art["path"]), so, providers=["CPUExecutionProvider"])
    in_name, out_name = art["input_name"], art["output_name"]
    col = (art.get("output_columns") or [0])[0]
    stream: dict[str, np.ndarray] = {}  # instrument -> its stream features (none yet: defaults)
    defaults = np.zeros(N_STREAM, dtype=np.float32)
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if on_ready is not None:
            on_ready()
        yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/predict")
    async def predict(q: Quote) -> dict[str, Any]:
        x = np.empty((1, N_STREAM + 2), dtype=np.float32)
        x[0, :N_STREAM] = stream.get(q.instrument, defaults)
        mid = 0.5 * (q.bid + q.ask)
        x[0, N_STREAM] = (q.ask - q.bid) / mid * 1e4
        x[0, N_STREAM + 1] = (q.bid_size - q.ask_size) / (q.bid_size + q.ask_size)
        y = sess.run([out_name], {in_name: x})[0]
        return {"p_up": float(y[0, col])}

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ready-file", default=None)
    args = ap.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)  # connections queue here until uvicorn accepts them
    host, port = sock.getsockname()[:2]

    def ready() -> None:
        if args.ready_file:
            tmp = args.ready_file + ".tmp"
            Path(tmp).write_text(f"{host}:{port}\n")
            os.replace(tmp, args.ready_file)

    app = create_app(Path(args.model_dir), ready)

    config = uvicorn.Config(app, loop="uvloop", http="httptools", workers=1, log_level="warning",
                            access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
