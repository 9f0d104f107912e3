"""ONNX Runtime backend tuned for latency.

One intra-op thread by default (a second thread costs more in wake-up than it saves at small
batches and steals the core that serves the next request), sequential execution, full graph
optimisation, and I/O binding: for each batch size seen, the input and output are bound once
to preallocated numpy buffers, so a call is one ``run_with_iobinding`` with no allocation.
The caller's input is copied into the bound buffer (a row copy, cheaper than rebinding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from tailguard.errors import ModelLoadError

__all__ = ["OnnxRuntime"]

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}


class OnnxRuntime:
    """A loaded ONNX model.  Not thread-safe: one caller thread at a time (the engine's)."""

    kind = "onnx"

    def __init__(
        self,
        path: str | Path,
        *,
        input_name: str = "",
        output_name: str = "",
        output_columns: tuple[int, ...] = (),
        intra_op_threads: int = 1,
        max_cached_batches: int = 32,
    ) -> None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = intra_op_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads burn the core the next request needs; with 1 thread it is moot.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelLoadError(f"{path}: ONNX Runtime cannot load the model: {exc}") from exc
        inputs = self._sess.get_inputs()
        outputs = self._sess.get_outputs()
        inp = next((i for i in inputs if i.name == input_name), inputs[0]) if input_name else inputs[0]
        out = (
            next((o for o in outputs if o.name == output_name), None) if output_name else outputs[0]
        )
        if out is None:
            raise ModelLoadError(f"{path}: no output named {output_name!r}")
        if inp.type != "tensor(float)":
            raise ModelLoadError(f"{path}: input {inp.name!r} must be float32, is {inp.type}")
        if len(inp.shape) != 2 or not isinstance(inp.shape[1], int):
            raise ModelLoadError(f"{path}: input {inp.name!r} must be (batch, n_features)")
        self._out_dtype = _ORT_DTYPES.get(out.type)
        if self._out_dtype is None:
            raise ModelLoadError(f"{path}: output {out.name!r} must be float, is {out.type}")
        self._in_name = inp.name
        self._out_name = out.name
        self.n_inputs: int = inp.shape[1]
        width = out.shape[1] if len(out.shape) == 2 and isinstance(out.shape[1], int) else 1
        self._out_width = width
        cols = list(output_columns or range(width))
        self._cols = np.array(cols, dtype=np.intp)
        # Contiguous output columns are read through a slice view (no gather, no temp);
        # anything else is gathered (np.take cannot cast float32 into a float64 out).
        contiguous = cols == list(range(cols[0], cols[0] + len(cols)))
        self._slice = slice(cols[0], cols[0] + len(cols)) if contiguous else None
        self.n_outputs: int = len(self._cols)
        self._max_cached = max_cached_batches
        self._bound: dict[int, tuple[ort.IOBinding, np.ndarray, np.ndarray, np.ndarray]] = {}

    def clone(self) -> OnnxRuntime:
        """Another instance sharing this ONNX Runtime session (whose ``Run`` is thread-safe)
        with its own I/O bindings and buffers, for a second thread."""
        other = object.__new__(OnnxRuntime)
        other.__dict__.update(self.__dict__)
        other._bound = {}
        return other

    def _bind(self, n: int) -> tuple[ort.IOBinding, np.ndarray, np.ndarray, np.ndarray]:
        if len(self._bound) >= self._max_cached:
            self._bound.clear()
        xin = np.zeros((n, self.n_inputs), dtype=np.float32)
        raw = np.zeros((n, self._out_width), dtype=self._out_dtype)
        res = np.zeros((n, self.n_outputs), dtype=np.float64)
        io = self._sess.io_binding()
        io.bind_input(self._in_name, "cpu", 0, np.float32, [n, self.n_inputs], xin.ctypes.data)
        shape = [n, self._out_width] if self._out_width > 1 or self._cols.size > 1 else [n]
        try:
            io.bind_output(self._out_name, "cpu", 0, self._out_dtype, shape, raw.ctypes.data)
            self._sess.run_with_iobinding(io)
        except Exception:
            # Some exporters declare (n,) outputs as (n, 1): bind the other way round.
            shape = [n] if len(shape) == 2 else [n, 1]
            io = self._sess.io_binding()
            io.bind_input(self._in_name, "cpu", 0, np.float32, [n, self.n_inputs], xin.ctypes.data)
            io.bind_output(self._out_name, "cpu", 0, self._out_dtype, shape, raw.ctypes.data)
        src = raw[:, self._slice] if self._slice is not None else raw
        entry = (io, xin, src, res)
        self._bound[n] = entry
        return entry

    def run(self, x: np.ndarray) -> np.ndarray:
        """Outputs (n, n_outputs) float64 for float32 rows ``x``; a view valid until the next call."""
        n = x.shape[0]
        entry = self._bound.get(n)
        if entry is None:
            entry = self._bind(n)
        io, xin, src, res = entry
        xin[...] = x
        self._sess.run_with_iobinding(io)
        if self._slice is not None:
            res[...] = src
        else:
            res[...] = src[:, self._cols]
        return res
