"""An edge variant of a service directory: the same features, the ladder from a cheaper rung.

The edge tier runs in process with a small model; the remote tier serves the same service
with its large model first.  ``edge_service_dir`` writes a copy of a service directory
whose ladder starts at ``first_rung`` (the rungs above it are dropped, and the models no
remaining rung uses, so the edge process neither loads nor warms them).  Feature views,
transforms, priorities and the models' files are unchanged, so both tiers compute the same
features with the same code and their models pin the same feature versions.

The rewrite works on the TOML text, table by table, so comments and layout are kept; the
result is loaded with ``load_spec`` before it is returned (a ``SpecError`` names what is
wrong).
"""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

from tailguard.errors import SpecError
from tailguard.spec import RungKind, load_spec

__all__ = ["edge_service_dir"]

# A table header line: [name], [a.b] or [[name]] (a trailing comment allowed).
_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-]+)\s*\]\]?\s*(#.*)?$")
_IGNORE = shutil.ignore_patterns("__pycache__", "runs", "data", ".tailguard")


def _blocks(text: str) -> list[tuple[str, list[str]]]:
    """The spec's lines grouped by table: (header name, lines); the top-level block is ''."""
    blocks: list[tuple[str, list[str]]] = [("", [])]
    for line in text.splitlines(keepends=True):
        m = _HEADER.match(line)
        if m is not None:
            blocks.append((m.group(1), []))
        blocks[-1][1].append(line)
    return blocks


def edge_service_dir(service_dir: str | Path, destination: str | Path, *, first_rung: str) -> Path:
    """Copy ``service_dir`` to ``destination`` (replaced if it exists) with a ladder that
    starts at rung ``first_rung``; returns the destination.  Raises ``SpecError`` when the
    rung is unknown or the result is not a valid spec."""
    src = Path(service_dir).resolve()
    spec = load_spec(src)
    names = [r.name for r in spec.ladder]
    if first_rung not in names:
        raise SpecError(f"no ladder rung {first_rung!r} (rungs: {names})", path="$.ladder")
    kept = spec.ladder[names.index(first_rung):]
    if kept[0].kind is not RungKind.MODEL:
        raise SpecError(f"rung {first_rung!r} is not a model rung: an edge ladder starts with a model",
                        path="$.ladder")
    dropped_rungs = set(names[:names.index(first_rung)])
    used_models = {r.model for r in kept if r.model is not None}
    dropped_models = {m.name for m in spec.models} - used_models
    text = (src / "service.toml").read_text()
    out: list[str] = []
    skipping = ""  # the array ("ladder" or "models") whose dropped element's sub-tables follow
    for header, lines in _blocks(text):
        if header in ("ladder", "models"):
            name = tomllib.loads("".join(lines[1:])).get("name")
            drop = dropped_rungs if header == "ladder" else dropped_models
            skipping = header if name in drop else ""
        elif not (skipping and header.startswith(skipping + ".")):
            skipping = ""
        if not skipping:
            out.extend(lines)
    dst = Path(destination)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=_IGNORE)
    for model in dropped_models:  # the edge never loads them: do not ship them
        repo = next(m.repository for m in spec.models if m.name == model)
        shutil.rmtree(dst / repo / model, ignore_errors=True)
    (dst / "service.toml").write_text("".join(out))
    load_spec(dst)
    return dst
