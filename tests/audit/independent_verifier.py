"""An audit log verifier written from docs/audit.md alone: it imports nothing from tailguard.

It decodes payloads as plain msgpack arrays (msgspec, untyped), recomputes the MAC chain with
hashlib, checks the rules of the document's "Rules that verify checks" section, checkpoint
digests and Ed25519 signatures (cryptography), the retention anchor, and record field sizes;
``pii_token`` recomputes a subject's token from its key file.  If the document were missing
something this needs, this module could not have been written: that is its point.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

ZERO = bytes(16)
ANCHOR_PREV = b"tailguard-anchor"
HEADER, RECORD, DROPPED, CHECKPOINT, ANCHOR = 0, 1, 2, 3, 4
NAME = re.compile(r"^segment-(\d{8})\.tgaudit$")


class Bad(Exception):
    """The log fails a rule."""


@dataclass
class Result:
    ok: bool = True
    error: str = ""
    records: int = 0
    rows: int = 0
    last_seq: int = -1
    segments: int = 0
    signed: int = 0
    first_segment: int = 0
    tokens: list[str] = field(default_factory=list)


def _mac(key: bytes, prev: bytes, payload: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16, key=key)
    h.update(prev + payload)
    return h.digest()


def _frames(data: bytes) -> list[tuple[int, bytes, bytes]]:
    out, pos = [], 0
    while pos + 4 <= len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        end = pos + 4 + n + 16
        if end > len(data):
            break
        out.append((pos, data[pos + 4 : pos + 4 + n], data[end - 16 : end]))
        pos = end
    return out


def _get(arr: list[Any], i: int, default: Any) -> Any:
    return arr[i] if len(arr) > i else default


def _check_sig(public_keys: list[bytes], signer: bytes, sig: bytes, message: bytes) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not sig:
        raise Bad("unsigned")
    if signer not in public_keys:
        raise Bad("signed by another key")
    try:
        Ed25519PublicKey.from_public_bytes(signer).verify(sig, message)
    except InvalidSignature:
        raise Bad("bad signature") from None


def _prefix(service: str, log_id: bytes) -> bytes:
    s = service.encode()
    return struct.pack(">H", len(s)) + s + log_id


def verify(directory: Path, key: bytes | None, public_keys: list[bytes] | None = None) -> Result:
    """Verify a log directory; ``Result.ok`` false with ``error`` on the first broken rule."""
    r = Result()
    try:
        _verify(Path(directory), key, public_keys or [], r)
    except Bad as exc:
        r.ok, r.error = False, str(exc)
    return r


def _verify(d: Path, key: bytes | None, pks: list[bytes], r: Result) -> None:
    prev, service, log_id = ZERO, None, b""
    anchor_file = d / "retention-anchor.tgaudit"
    if anchor_file.exists():
        data = anchor_file.read_bytes()
        frames = _frames(data)
        if len(frames) != 1 or 4 + len(frames[0][1]) + 16 != len(data):
            raise Bad("anchor: not exactly one entry")
        _, payload, tag = frames[0]
        if key is not None and _mac(key, ANCHOR_PREV, payload) != tag:
            raise Bad("anchor: MAC mismatch")
        a = msgspec.msgpack.decode(payload)
        if a[0] != ANCHOR:
            raise Bad("anchor: wrong tag")
        service, log_id, r.first_segment, first_seq, chain_mac = a[1], a[2], a[3], a[4], a[5]
        if pks:
            msg = (b"tailguard-audit/anchor\n" + _prefix(a[1], a[2]) + struct.pack(">QQ", a[3], a[4])
                   + a[5] + struct.pack(">Qqq", a[6], a[7], a[8]))
            _check_sig(pks, _get(a, 9, b""), _get(a, 10, b""), msg)
        prev, r.last_seq = chain_mac, first_seq - 1
    files = sorted((int(m.group(1)), p) for p in d.iterdir() if (m := NAME.match(p.name)))
    files = [(n, p) for n, p in files if n >= r.first_segment]
    if not files:
        raise Bad("no segments")
    version = 0
    for k, (number, path) in enumerate(files):
        if number != r.first_segment + k:
            raise Bad(f"segment {r.first_segment + k} missing")
        newest = k == len(files) - 1
        data = path.read_bytes()
        closed, header, end = False, None, 0
        for i, (offset, payload, tag) in enumerate(_frames(data)):
            if closed:
                raise Bad("entry after closing")
            if key is not None and _mac(key, prev, payload) != tag:
                raise Bad(f"{path.name} entry {i}: MAC mismatch")
            e = msgspec.msgpack.decode(payload)
            if (i == 0) != (e[0] == HEADER):
                raise Bad("header position")
            if e[0] == HEADER:
                if e[1] != "tailguard-audit" or e[2] not in (1, 2) or e[2] < version:
                    raise Bad("magic/version")
                version, header = e[2], e
                if e[4] != number or e[6] != r.last_seq + 1:
                    raise Bad("header numbering")
                if service is not None and e[3] != service:
                    raise Bad("foreign service")
                service = e[3]
                hl = _get(e, 7, b"")
                if hl and log_id and hl != log_id:
                    raise Bad("foreign log")
                log_id = log_id or hl
                if pks and not _get(e, 9, b""):
                    raise Bad("unsigned segment")
            elif e[0] in (RECORD, DROPPED):
                if e[1] != r.last_seq + 1:
                    raise Bad("sequence")
                r.last_seq = e[1]
                if e[0] == RECORD:
                    _record(e, header, r)
            elif e[0] == CHECKPOINT:
                assert header is not None
                seq, entries, closing = e[1], e[3], e[4]
                chain_mac, digest = _get(e, 5, b""), _get(e, 6, b"")
                signer, sig = _get(e, 7, b""), _get(e, 8, b"")
                if seq != r.last_seq + 1 or entries != i:
                    raise Bad("checkpoint counts")
                # prev is the MAC stored with the entry before (what chain_mac must be)
                if header[2] >= 2 and (chain_mac != prev or digest != hashlib.sha256(data[:offset]).digest()):
                    raise Bad("checkpoint chain MAC or digest")
                if _get(header, 9, b"") and not sig:
                    raise Bad("unsigned checkpoint")
                if pks:
                    msg = (b"tailguard-audit/checkpoint\n" + _prefix(header[3], _get(header, 7, b""))
                           + struct.pack(">QQQB", number, seq, entries, closing) + chain_mac + digest)
                    _check_sig(pks, signer, sig, msg)
                    r.signed += 1
                closed = closing
            else:
                raise Bad("unknown tag")
            prev = tag
            end = offset + 4 + len(payload) + 16
        if header is None:
            raise Bad("empty segment")
        if not newest and (not closed or end != len(data)):
            raise Bad("truncated")
        r.segments += 1


def _record(e: list[Any], header: list[Any] | None, r: Result) -> None:
    assert header is not None
    rows = len(e[7])
    width, n_out = e[9], e[11]
    if len(e[8]) != rows or len(e[10]) != 4 * rows * width or len(e[12]) != 8 * rows * n_out:
        raise Bad("record sizes")
    if len(e[13]) != 5:
        raise Bad("timings")
    if header[2] >= 2 and len(_get(e, 16, b"")) != 8 * rows * len(_get(header, 10, [])):
        raise Bad("ages size")
    keys = e[4]
    for k in keys if isinstance(keys, list) else [keys]:
        if isinstance(k, str) and k.startswith("pii1:"):
            r.tokens.append(k)
    r.records += 1
    r.rows += rows


def ages(e_payload: bytes) -> list[int]:
    """The ages field of one record payload, as ints."""
    e = msgspec.msgpack.decode(e_payload)
    raw = _get(e, 16, b"")
    return list(struct.unpack(f"<{len(raw) // 8}q", raw))


def pii_token(subject_file: bytes, entity: str, key: Any) -> str:
    """The token of a subject from its 40-byte key file (id || key)."""
    sid, skey = subject_file[:8], subject_file[8:]
    subject = msgspec.msgpack.encode([entity, key])
    return "pii1:" + sid.hex() + ":" + hashlib.blake2b(subject, digest_size=16, key=skey).hexdigest()


def subject_file(directory: Path, entity: str, key: Any) -> Path:
    """Where the subject key directory keeps a subject's file."""
    index_key = (directory / "index.key").read_bytes()
    h = hashlib.blake2b(msgspec.msgpack.encode([entity, key]), digest_size=16, key=index_key).hexdigest()
    return directory / h[:2] / f"{h}.key"
