"""The retention anchor: proof of what a retention cut removed (``retention-anchor.tgaudit``).

The file holds exactly one entry framed like a segment entry — ``u32 length | payload |
16-byte MAC`` — whose payload is an ``Anchor`` and whose MAC is
``BLAKE2b-128(K, ANCHOR_PREV || payload)``, optionally Ed25519-signed over
``anchor_message``.  It names the first retained segment, the sequence number and the chain
MAC the retained chain continues from, and totals of what was removed, so ``verify`` checks
the remaining segments from there, while a segment deleted without a matching anchor — or
an anchor forged without the key — is still found.  It is replaced atomically (write,
fsync, rename, fsync the directory) *before* any segment is deleted, so a crash in between
leaves old segments that merely precede the anchor.

Owner: whoever cuts (the writer's side path or ``tailguard audit retain``): one at a time.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from tailguard.audit.format import ANCHOR_NAME, ANCHOR_PREV, LEN, MAC_BYTES, Anchor, anchor_message, mac
from tailguard.audit.keys import Signer

__all__ = ["fsync_dir", "read_anchor", "write_anchor"]

_DECODER = msgspec.msgpack.Decoder(Anchor)
_ENCODER = msgspec.msgpack.Encoder()


def read_anchor(directory: Path, key: bytes | None) -> Anchor | str | None:
    """The anchor of ``directory`` (None when there is none), its MAC checked when ``key``
    is given; a string says why the file is not a valid anchor."""
    try:
        data = (directory / ANCHOR_NAME).read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < LEN.size + MAC_BYTES:
        return "the retention anchor is cut short"
    (n,) = LEN.unpack_from(data)
    if len(data) != LEN.size + n + MAC_BYTES:
        return "the retention anchor is not exactly one entry (truncated or appended to)"
    payload, tag = data[LEN.size : LEN.size + n], data[LEN.size + n :]
    if key is not None and mac(key, ANCHOR_PREV, payload) != tag:
        return "retention anchor MAC mismatch: the anchor was forged or modified, or the key is wrong"
    try:
        return _DECODER.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return f"undecodable retention anchor: {exc}"


def write_anchor(directory: Path, key: bytes, anchor: Anchor, signer: Signer | None) -> Anchor:
    """Sign (when ``signer`` is given), MAC and atomically install ``anchor``; returns it as
    written."""
    if signer is not None:
        anchor = msgspec.structs.replace(anchor, signer=signer.public,
                                         signature=signer.sign(anchor_message(anchor)))
    payload = _ENCODER.encode(anchor)
    tmp = directory / f".{ANCHOR_NAME}.tmp"
    with tmp.open("wb") as f:
        f.write(LEN.pack(len(payload)) + payload + mac(key, ANCHOR_PREV, payload))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / ANCHOR_NAME)
    fsync_dir(directory)
    return anchor


def fsync_dir(directory: Path) -> None:
    """Make renames and unlinks in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
