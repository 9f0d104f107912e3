"""The ingest worker's checkpoint: the stream processor's whole state at one stream position.

Why a checkpoint of the *states*, not just of the position: the aggregates (windows, EWMAs,
last-N, sketches) live in the worker's memory.  A restarted worker that knew only the last
applied stream sequence would resume with empty states and serve values that never saw
the earlier events.  So the checkpoint holds, consistently at one sequence ``last_seq``:
every view's per-entity states and last event times, the watermark base, the remembered
event ids (deduplication) and the counters.  The worker writes it after the batch's feature
rows are flushed to the store and before it acknowledges the batch to JetStream, so

* a crash before the checkpoint: the restarted worker restores the previous checkpoint and
  JetStream redelivers every message after it; they are applied again to the *restored*
  states, which rewrites the same rows (no double count);
* a crash after the checkpoint but before the ack: the redelivered messages are at or
  below ``last_seq``, so the processor counts them as duplicates and applies nothing.

The file is ``MAGIC``, one JSON header line (stream, durable, subject, ``last_seq``, view
versions: readable without the transform code) and a pickle of the processor's
``ProcessorSnapshot`` (``StreamProcessor.snapshot``; format 1 files, ``TGCKPT1``, pickled a
plain dict of the same content and are still read).  It is written
to a temporary file, fsynced, renamed over the old one and the directory fsynced, so a crash
leaves the old checkpoint or the new one, never a torn one.  Pickle runs the transform
classes' code on load: a checkpoint is trusted like the service directory itself (the worker
reads only the file it writes).  States of a view whose version changed are refused
(``FeatureError``): delete the checkpoint to rebuild the states from the stream.

Thread ownership: the processor's owner thread (the worker's) calls everything here.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from tailguard.errors import FeatureError
from tailguard.features.stream import SNAPSHOT_VERSION, ProcessorSnapshot, StreamProcessor, ViewStates
from tailguard.features.view import FeatureView

__all__ = ["MAGIC", "CheckpointHeader", "load_checkpoint", "read_header", "write_checkpoint"]

#: First bytes of a checkpoint file (format version 2: a pickled ``ProcessorSnapshot``).
MAGIC = b"TGCKPT2\n"
_MAGIC_V1 = b"TGCKPT1\n"  # a pickled dict (read, never written)


class CheckpointHeader(msgspec.Struct, frozen=True, kw_only=True):
    """What a checkpoint says about itself (readable without the transforms)."""

    stream: str
    durable: str
    subject: str
    #: The last stream sequence whose event is folded into the states.
    last_seq: int
    #: View name -> version of the states held.
    versions: dict[str, str]
    #: Wall-clock time of writing, ns since the epoch (for operators).
    written_wall_ns: int = 0


def _versions(views: Mapping[str, FeatureView], p: StreamProcessor) -> dict[str, str]:
    return {name: views[name].version for name in p.view_versions}


def write_checkpoint(
    path: str | Path, processor: StreamProcessor, views: Mapping[str, FeatureView], *,
    stream: str, durable: str, subject: str, wall_ns: int = 0,
) -> int:
    """Write ``processor``'s state atomically to ``path``; returns the bytes written."""
    path = Path(path)
    header = CheckpointHeader(stream=stream, durable=durable, subject=subject,
                              last_seq=processor.last_seq, versions=_versions(views, processor),
                              written_wall_ns=wall_ns)
    try:
        # Shared, not copied, states: pickled right here, before the processor moves on.
        body = pickle.dumps(processor.snapshot(copy_states=False), protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise FeatureError(f"cannot checkpoint the stream states (a transform state is not picklable): "
                           f"{exc}") from exc
    data = MAGIC + msgspec.json.encode(header) + b"\n" + body
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return len(data)


def _split(path: Path) -> tuple[CheckpointHeader, bytes]:
    data = path.read_bytes()
    if not data.startswith((MAGIC, _MAGIC_V1)):
        raise FeatureError(f"{path} is not an ingest checkpoint")
    end = data.index(b"\n", len(MAGIC))
    try:
        header = msgspec.json.decode(data[len(MAGIC):end], type=CheckpointHeader)
    except msgspec.DecodeError as exc:
        raise FeatureError(f"{path}: unreadable checkpoint header: {exc}") from exc
    return header, data[end + 1:]


def read_header(path: str | Path) -> CheckpointHeader | None:
    """The header of the checkpoint at ``path`` (None when there is none)."""
    p = Path(path)
    return _split(p)[0] if p.exists() else None


def load_checkpoint(
    path: str | Path, processor: StreamProcessor, views: Mapping[str, FeatureView], *,
    stream: str, durable: str,
) -> CheckpointHeader | None:
    """Restore ``processor`` (fresh: nothing applied yet) from ``path``; None when there is
    no checkpoint.  Every restored row is marked changed, so the next ``flush`` writes it
    (a fresh in-memory store is filled again; a shared store gets the same values again).
    Raises ``FeatureError`` when the file belongs to another stream or durable consumer, or
    holds states of a view version that is no longer live."""
    p = Path(path)
    if not p.exists():
        return None
    header, body = _split(p)
    if (header.stream, header.durable) != (stream, durable):
        raise FeatureError(f"{p} is the checkpoint of stream {header.stream!r} consumer {header.durable!r}, "
                           f"not of {stream!r} consumer {durable!r}")
    live = _versions(views, processor)
    changed = sorted(n for n, v in header.versions.items() if live.get(n) != v)
    if changed:
        raise FeatureError(f"{p} holds states of views whose version changed since: {changed}; delete the "
                           "checkpoint to rebuild them from the stream")
    try:
        snap = pickle.loads(body)
    except Exception as exc:  # unpickling can raise anything a class's code raises
        raise FeatureError(f"{p}: cannot restore the stream states: {exc!r}") from exc
    if isinstance(snap, dict):
        snap = _from_v1(snap, header.versions)
    if not isinstance(snap, ProcessorSnapshot):
        raise FeatureError(f"{p}: the checkpoint body is a {type(snap).__name__}, not a stream snapshot")
    try:
        processor.restore(snap, copy_states=False)  # just unpickled: nobody else holds the states
    except FeatureError as exc:
        raise FeatureError(f"{p}: {exc}; delete the checkpoint to rebuild them from the stream") from exc
    return header


def _from_v1(snap: dict[str, Any], versions: Mapping[str, str]) -> ProcessorSnapshot:
    """A format-1 checkpoint's dict as a snapshot (the header holds the view versions)."""
    counters = dict(snap["counters"])
    counters.update(snap["rejected"])
    views = {name: ViewStates(versions.get(name, ""), states, last_ts)
             for name, (states, last_ts) in snap["routes"].items()}
    return ProcessorSnapshot(version=SNAPSHOT_VERSION, last_seq=snap["last_seq"], max_ts_ns=snap["max_ts_ns"],
                             views=views, event_ids=tuple(snap["ids"]), counters=counters)
