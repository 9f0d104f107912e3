"""ONNX graph candidates: ONNX Runtime offline optimisation, int8 quantisation, float16.

* ``onnx``: the version's ONNX graph as is (listed when the version serves compiled trees,
  so the two runtimes are compared);
* ``ort-optimized``: the graph after ONNX Runtime's full optimisation (``ORT_ENABLE_ALL``:
  constant folding, redundant-node elimination, fusions, layout), saved through
  ``SessionOptions.optimized_model_filepath``.  The saved graph may use ONNX Runtime's own
  contrib operators and layouts chosen for this CPU: serve it with the same ONNX Runtime
  version on the same kind of machine;
* ``int8-dynamic``: ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, activations
  quantised at run time).  It rewrites MatMul/Gemm/Conv-like operators only; a graph with
  none (a tree ensemble) would come out unchanged, so the candidate is skipped, saying so;
* ``int8-static``: ``quantize_static`` (QDQ format) calibrated with min/max ranges on a
  sample of the distillation half of the validation rows;
* ``float16``: ``onnxconverter_common.float16`` with float32 inputs and outputs kept.  The
  converter leaves the ``ai.onnx.ml`` operators (tree ensembles, linear models) in float32;
  float16 arithmetic on a CPU is rarely faster, and the table shows what it did.

Quantisation and float16 need the ``optimize`` extra (``onnxconverter-common``; the
quantiser ships with onnxruntime).  Each builder turns its own failure into a skipped
candidate with the reason: one converter's bug must not stop the others being measured.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import shutil
from collections.abc import Iterator

import numpy as np
import onnxruntime as ort

from tailguard.optimize.candidates import Candidate, Source, onnx_candidate, skipped

__all__ = ["graph_candidates"]

_QUANT_OPS = frozenset({
    "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "MatMulInteger", "ConvInteger",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm", "QLinearMatMul", "QLinearConv",
    "DynamicQuantizeLSTM", "QAttention",
})
EXTRA = "pip install 'tailguard[optimize]'"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the quantiser's advice (logged on the root logger, printed, and ONNX Runtime's
    shape warnings while it calibrates)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    ort.set_default_logger_severity(3)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        ort.set_default_logger_severity(2)
        root.setLevel(level)


def _as_is(source: Source) -> Candidate:
    d = source.scratch("onnx")
    assert source.onnx is not None
    shutil.copyfile(source.directory / source.onnx.path, d / "model.onnx")
    return onnx_candidate("onnx", "the version's ONNX graph, unchanged, on ONNX Runtime", source, d)


def _ort_optimized(source: Source) -> Candidate:
    name, desc = "ort-optimized", "ONNX Runtime offline graph optimisation (ORT_ENABLE_ALL), saved"
    d = source.scratch(name)
    assert source.onnx is not None
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(d / "model.onnx")
    try:
        with _quiet():  # ORT warns that the saved graph suits this machine: the docstring says so
            ort.InferenceSession(str(source.directory / source.onnx.path), so,
                                 providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        return skipped(name, desc, f"ONNX Runtime could not optimise the graph: {exc}")
    return onnx_candidate(name, desc, source, d)


def _op_types(path: str) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load(path).graph.node]


def _int8_dynamic(source: Source) -> Candidate:
    name, desc = "int8-dynamic", "int8 dynamic quantisation (onnxruntime.quantization.quantize_dynamic)"
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        return skipped(name, desc, f"onnxruntime.quantization is not importable ({exc}): {EXTRA}")
    d = source.scratch(name)
    assert source.onnx is not None
    out = d / "model.onnx"
    try:
        with _quiet():
            quantize_dynamic(str(source.directory / source.onnx.path), str(out), weight_type=QuantType.QInt8)
        ops = _op_types(str(out))
    except Exception as exc:  # the quantiser raises assorted ValueError/RuntimeError/onnx errors
        return skipped(name, desc, f"quantize_dynamic failed: {exc}")
    if not _QUANT_OPS.intersection(ops):
        shutil.rmtree(d)
        return skipped(name, desc, "nothing to quantise: the graph has no MatMul/Gemm/Conv "
                       f"(operators: {', '.join(sorted(set(ops)))}); the result equals the baseline")
    return onnx_candidate(name, desc, source, d)


def _first_input(path: str) -> str:
    import onnx

    return str(onnx.load(path).graph.input[0].name)


class _Reader:
    """Calibration rows in batches of 64 (duck-types ``CalibrationDataReader``)."""

    def __init__(self, input_name: str, x: np.ndarray) -> None:
        self._batches = iter([{input_name: x[i:i + 64]} for i in range(0, len(x), 64)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next calibration batch, None when done."""
        return next(self._batches, None)


def _int8_static(source: Source, calibration: np.ndarray) -> Candidate:
    name, desc = "int8-static", f"int8 static quantisation (QDQ), calibrated on {len(calibration)} rows"
    try:
        from onnxruntime.quantization import QuantFormat, quantize_static
    except ImportError as exc:
        return skipped(name, desc, f"onnxruntime.quantization is not importable ({exc}): {EXTRA}")
    d = source.scratch(name)
    onnx_art = source.onnx
    assert onnx_art is not None
    inp = onnx_art.input_name or _first_input(str(source.directory / onnx_art.path))
    reader = _Reader(inp, calibration)  # a CalibrationDataReader by its __subclasshook__
    try:
        with _quiet():
            quantize_static(str(source.directory / onnx_art.path), str(d / "model.onnx"), reader,
                            quant_format=QuantFormat.QDQ)
        ops = _op_types(str(d / "model.onnx"))
    except Exception as exc:  # the quantiser raises assorted ValueError/RuntimeError/onnx errors
        return skipped(name, desc, f"quantize_static failed: {exc}")
    if not _QUANT_OPS.intersection(ops):
        shutil.rmtree(d)
        return skipped(name, desc, "nothing was quantised; the result equals the baseline")
    return onnx_candidate(name, desc, source, d)


def _float16(source: Source) -> Candidate:
    name, desc = "float16", "float16 weights and arithmetic (onnxconverter-common), float32 I/O kept"
    try:
        import onnx

        float16 = importlib.import_module("onnxconverter_common.float16")
    except ImportError:
        return skipped(name, desc, f"the float16 converter (onnxconverter-common) is not installed: {EXTRA}")
    d = source.scratch(name)
    assert source.onnx is not None
    try:
        model = onnx.load(str(source.directory / source.onnx.path))
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
        onnx.save(converted, str(d / "model.onnx"))
        return onnx_candidate(name, desc, source, d)
    except Exception as exc:  # converter and session errors of many types
        why = str(exc).rsplit("failed:", 1)[-1].strip()
        return skipped(name, desc, f"the converted graph does not load or run: {why}")


def graph_candidates(source: Source, calibration: np.ndarray, *, baseline_kind: str) -> list[Candidate]:
    """Every ONNX candidate of ``source`` (skipped ones included, each saying why)."""
    if source.onnx is None:
        reason = "the version has no ONNX artifact"
        return [skipped(n, "ONNX graph candidate", reason)
                for n in ("ort-optimized", "int8-dynamic", "int8-static", "float16")]
    out = [_as_is(source)] if baseline_kind != "onnx" else []
    out += [_ort_optimized(source), _int8_dynamic(source), _int8_static(source, calibration),
            _float16(source)]
    return out
