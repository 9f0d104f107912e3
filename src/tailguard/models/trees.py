"""Compiled gradient-boosted trees: LightGBM -> C (tl2cgen) -> a shared library -> ctypes.

Chosen by measurement (``benchmarks/trees.py``, figures in docs/benchmarks.md): at batch 1
on a 200-tree, 31-leaf, 32-feature GBDT the compiled code behind one ctypes call took 5.9 us
at p50, against 10.8 us for ONNX Runtime with I/O binding, 11.8 us for a plain
``session.run``, 12-20 us through tl2cgen's own Predictor/DMatrix and 24 us for LightGBM's
``predict``; lleaves 1.3 does not build against the current llvmlite.  tl2cgen generates
the per-row C code; tailguard adds a small batch shim (``_tree_shim.c``) so one foreign call
scores a whole matrix.

Compiling needs the ``trees`` extra and a C compiler; *loading* a compiled model needs only
the core (ctypes).  The generated C sources are kept beside the library, so a version copied
to a machine whose loader rejects the library is rebuilt there from source.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from tailguard.errors import ModelLoadError

__all__ = ["TreesRuntime", "compile_lightgbm"]

SOURCES = "trees_src"


def compile_lightgbm(model_file: str | Path, out_dir: str | Path, *, lib_name: str = "model.so") -> Path:
    """Compile a LightGBM text model into ``out_dir/lib_name`` (+ sources in ``trees_src/``)."""
    try:
        import tl2cgen
        import treelite
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ModelLoadError(
            "compiling trees needs the 'trees' extra: pip install 'tailguard[trees]'"
        ) from exc
    out = Path(out_dir)
    src = out / SOURCES
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    model = treelite.frontend.load_lightgbm_model(str(model_file))
    tl2cgen.generate_c_code(model, dirpath=str(src), params={"parallel_comp": 4, "quantize": 0})
    shim = resources.files("tailguard.models").joinpath("_tree_shim.c").read_text()
    (src / "tg_shim.c").write_text(shim)
    lib = out / lib_name
    _build(src, lib)
    return lib


_dlopen: Any = None


def preload(path: str | Path) -> None:
    """``dlopen`` the library at ``path`` through a GIL-releasing foreign call, so the
    ``ctypes`` load that follows finds it mapped and holds the GIL for microseconds, not the
    0.5-0.8 ms a cold ``dlopen`` (relocations, page faults) takes: a version loaded on a
    background thread (a hot swap) then never stalls the thread serving decisions.  The
    extra reference keeps the library mapped for the life of the process, as ``ctypes``
    does anyway.  A failure here is left to the ``ctypes`` load to report."""
    global _dlopen
    if _dlopen is None:
        fn = ctypes.CDLL(None).dlopen
        fn.restype = ctypes.c_void_p
        fn.argtypes = [ctypes.c_char_p, ctypes.c_int]
        _dlopen = fn
    _dlopen(str(path).encode(), ctypes.RTLD_LOCAL | 2)  # RTLD_NOW, as ctypes loads


def _build(src: Path, lib: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise ModelLoadError("compiling trees needs a C compiler (cc, gcc or clang) on PATH")
    files = sorted(str(p) for p in src.glob("*.c"))
    tmp = lib.with_suffix(".tmp.so")
    cmd = [cc, "-O3", "-fPIC", "-shared", "-std=c99", "-o", str(tmp), *files, "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ModelLoadError(f"C compiler failed on {src}:\n{proc.stderr[-2000:]}")
    tmp.replace(lib)


class TreesRuntime:
    """A compiled tree ensemble called through ctypes.

    ``release_gil=False`` (the default, for the thread that serves decisions) keeps the GIL
    during the call: a call of a few microseconds gains nothing from releasing it, and an
    owner that releases and retakes the GIL at every decision starves every other Python
    thread of it (CPython hands it straight back).  ``clone()`` gives a GIL-releasing
    instance for other threads (background probes, isolated models), so a long tree walk
    there never blocks the owner.
    """

    kind = "trees"

    def __init__(self, lib_path: str | Path, *, pred_margin: bool = False, release_gil: bool = False) -> None:
        path = Path(lib_path)
        self._path = path
        self.release_gil = release_gil
        loader = ctypes.CDLL if release_gil else ctypes.PyDLL
        preload(path)
        try:
            lib = loader(str(path))
        except OSError as exc:
            lib = loader(str(self._rebuild(path, exc)))
        try:
            fn = lib.tg_predict
            nf = lib.tg_num_feature
            no = lib.tg_num_output
        except AttributeError as exc:
            raise ModelLoadError(f"{path}: not a tailguard tree library (no tg_predict)") from exc
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int32]
        nf.restype = no.restype = ctypes.c_int32
        self._lib = lib
        self._fn = fn
        self.n_inputs: int = int(nf())
        self.n_outputs: int = int(no())
        self._margin = int(pred_margin)
        self._in = np.zeros((1, self.n_inputs), dtype=np.float32)
        self._out = np.zeros((1, self.n_outputs), dtype=np.float64)
        self._in_ptr = self._in.ctypes.data
        self._out_ptr = self._out.ctypes.data
        # Views of the buffers per batch size, made once (slicing costs ~200 ns).
        self._views: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @staticmethod
    def _rebuild(path: Path, cause: OSError) -> Path:
        src = path.parent / SOURCES
        if not src.is_dir():
            raise ModelLoadError(f"{path}: cannot load compiled trees ({cause}) and no sources") from cause
        digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(src.glob("*.c")))).hexdigest()
        cache = Path(tempfile.gettempdir()) / "tailguard-trees" / digest[:16]
        cache.mkdir(parents=True, exist_ok=True)
        lib = cache / path.name
        if not lib.exists():
            _build(src, lib)
        try:
            ctypes.CDLL(str(lib))
        except OSError as exc:
            raise ModelLoadError(f"{path}: rebuilt library does not load: {exc}") from exc
        return lib

    def clone(self) -> TreesRuntime:
        """Another instance over the same library with its own buffers, releasing the GIL
        during calls (for a second thread: instances are not thread-safe, the code is)."""
        return TreesRuntime(self._path, pred_margin=bool(self._margin), release_gil=True)

    def _grow(self, n: int) -> None:
        cap = max(n, 2 * self._in.shape[0])
        self._in = np.zeros((cap, self.n_inputs), dtype=np.float32)
        self._out = np.zeros((cap, self.n_outputs), dtype=np.float64)
        self._in_ptr = self._in.ctypes.data
        self._out_ptr = self._out.ctypes.data
        self._views.clear()

    def run(self, x: np.ndarray) -> np.ndarray:
        """Outputs (n, n_outputs) float64 for float32 rows ``x``; a view valid until the next call."""
        n = x.shape[0]
        if n > self._in.shape[0]:
            self._grow(n)
        views = self._views.get(n)
        if views is None:
            views = self._views[n] = (self._in[:n], self._out[:n])
        # Copy into our own contiguous buffer: its address is known, so no per-call
        # ``x.ctypes`` lookup (~700 ns) and any input layout is accepted.
        views[0][...] = x
        self._fn(self._in_ptr, n, self.n_inputs, self._out_ptr, self._margin)
        return views[1]
