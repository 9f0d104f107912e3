"""Compiling the decision ring's C writer (``_ringwriter.c``) at first use, into a cache.

The source ships next to ``tailguard.observe.ring``; it is compiled with the system C compiler
into ``$TAILGUARD_CACHE_DIR`` (else ``$XDG_CACHE_HOME/tailguard``, else ``~/.cache/tailguard``),
keyed by the source, the Python ABI and the numpy version, and loaded as an extension module.
Any failure leaves the ring's Python writer in use, with the reason.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from importlib import resources
from pathlib import Path
from types import ModuleType

import numpy as np

__all__ = ["cache_dir", "compile_writer"]

_compiled: dict[str, tuple[ModuleType | None, str]] = {}


def cache_dir() -> Path:
    """Where compiled writers are kept."""
    env = os.environ.get("TAILGUARD_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tailguard"


def _compiler() -> list[str] | None:
    cc = shlex.split(str(sysconfig.get_config_var("CC") or ""))
    if cc and shutil.which(cc[0]):
        return cc
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return [name]
    return None


def compile_writer() -> tuple[ModuleType | None, str]:
    """The compiled ``_ringwriter`` module (compiled into the cache at first use), or None and
    why it is not available."""
    if os.environ.get("TAILGUARD_NO_COMPILE", "") not in ("", "0"):
        return None, "TAILGUARD_NO_COMPILE is set"
    try:
        source = resources.files("tailguard.observe").joinpath("_ringwriter.c").read_bytes()
    except OSError as e:
        return None, f"cannot read _ringwriter.c: {e}"
    suffix = str(sysconfig.get_config_var("EXT_SUFFIX") or ".so")
    flags = _numpy_flags()
    digest = hashlib.sha256(source + suffix.encode() + " ".join(flags).encode()).hexdigest()[:16]
    directory = cache_dir()
    path = directory / f"_ringwriter-{digest}{suffix}"
    memo = _compiled.get(str(path))
    if memo is not None:
        return memo
    result = _build_and_load(source, path, directory, flags)
    _compiled[str(path)] = result
    return result


def _numpy_flags() -> list[str]:
    """Compiler flags for numpy's array struct (the outputs' fast path), with its version: the
    struct is read directly, so a writer is compiled per numpy version.  None without headers."""
    include = Path(np.get_include())
    if not (include / "numpy" / "ndarraytypes.h").exists():
        return []
    return ["-DTG_NUMPY", f"-DTG_NUMPY_VERSION={np.__version__}", f"-I{include}"]


def _build_and_load(source: bytes, path: Path, directory: Path,
                    flags: list[str]) -> tuple[ModuleType | None, str]:
    if not path.exists():
        cc = _compiler()
        if cc is None:
            return None, "no C compiler found (CC, cc, gcc, clang)"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, src = tempfile.mkstemp(suffix=".c", prefix="_ringwriter-", dir=directory)
            with os.fdopen(fd, "wb") as f:
                f.write(source)
            tmp = f"{src[:-2]}.tmp{path.suffix}"
            try:
                include = sysconfig.get_paths()["include"]
                cmd = [*cc, "-O2", "-shared", "-fPIC", f"-I{include}", *flags, src, "-o", tmp]
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
                if r.returncode != 0:
                    last = (r.stderr or r.stdout).strip().splitlines()[-1:] or [""]
                    return None, f"compiling _ringwriter.c failed ({r.returncode}): {last[0]}"
                os.replace(tmp, path)  # atomic: a concurrent compile replaces it with the same bytes
            finally:
                for p in (src, tmp):
                    if os.path.exists(p):
                        os.unlink(p)
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"compiling _ringwriter.c failed: {e}"
    try:
        name = "tailguard.observe._ringwriter"
        loader = importlib.machinery.ExtensionFileLoader(name, str(path))
        spec = importlib.util.spec_from_file_location(name, path, loader=loader)
        if spec is None:
            return None, f"cannot load {path}"
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    except Exception as e:  # ImportError, OSError: a broken cache file, another ABI
        return None, f"loading {path} failed: {e}"
    return module, ""
