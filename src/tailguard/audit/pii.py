"""Personal data in the audit log: entity keys marked ``pii`` never reach a segment as given.

The spec marks an entity ``pii = true`` with ``pii_mode``: ``drop`` logs ``nil`` in place of
each of its keys; ``hash`` logs the token ``"pii1:<subject id>:<tag>"`` where, for the
subject ``s = msgpack([entity, key])``, ``tag = BLAKE2b-128(subject key, s)`` (hex) and the
subject id (8 random bytes, hex) and the 32-byte subject key are created together the first
time the subject is logged.  ``SubjectKeys`` keeps them in a directory (mode 0700): one
40-byte file (id || key, mode 0600) per subject, named ``ab/abcd….key`` after
``BLAKE2b-128(index key, s)`` so file names reveal no key.  Holding the directory, an
auditor can find and prove a subject's records; ``erase`` destroys one subject's file, after
which its records can no longer be linked to it, while the chain still verifies (the log
itself is not touched).  Replay is unaffected: it runs on the recorded features, not keys.

Erasures reach a running writer through ``erased.log`` (one line per erasure): the writer
checks its size once per drain and forgets every cached token when it grew.

Owner: the audit writer's thread (``token``, ``refresh``, ``sync``); ``erase`` from any process.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from tailguard.audit.keys import write_private
from tailguard.audit.problems import AuditError, Code
from tailguard.spec import EntitySpec

__all__ = ["PiiPolicy", "SubjectKeys", "plain", "subject_bytes", "token_for"]

_ID_BYTES, _KEY_BYTES = 8, 32


def plain(obj: Any) -> Any:
    """``obj`` as msgpack can hold it: NumPy scalars and arrays become Python values; any
    other non-msgpack value its ``str`` (a request-only service echoes arbitrary keys)."""
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    return str(obj)


_ENCODER = msgspec.msgpack.Encoder(enc_hook=plain)


def subject_bytes(entity: str, key: Any) -> bytes:
    """The bytes that name a subject: msgpack of ``[entity, key]``."""
    return _ENCODER.encode([entity, key])


class SubjectKeys:
    """Per-subject keys in ``directory`` (see the module docstring)."""

    def __init__(self, directory: str | Path, *, cache_size: int = 1 << 16) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        index = self.directory / "index.key"
        with contextlib.suppress(FileExistsError):  # made by an earlier run or another worker
            write_private(index, os.urandom(32))
        self._index_key = index.read_bytes()
        if len(self._index_key) != 32:
            raise AuditError(f"{index}: corrupt subject index key ({len(self._index_key)} bytes)")
        self._erased = self.directory / "erased.log"
        self._erased_size = self._erased.stat().st_size if self._erased.exists() else 0
        self._cache: dict[tuple[str, Any], str] = {}
        self._cache_size = cache_size
        self._unsynced: list[Path] = []
        #: Subject keys this process created.
        self.created = 0

    def path(self, entity: str, key: Any) -> Path:
        """The file that holds (or would hold) the subject's id and key."""
        h = hashlib.blake2b(subject_bytes(entity, key), digest_size=16, key=self._index_key).hexdigest()
        return self.directory / h[:2] / f"{h}.key"

    def lookup(self, entity: str, key: Any) -> tuple[bytes, bytes] | None:
        """(subject id, subject key), or None when none is stored (never logged, or erased)."""
        try:
            data = self.path(entity, key).read_bytes()
        except FileNotFoundError:
            return None
        if len(data) != _ID_BYTES + _KEY_BYTES:
            return None  # a file cut short by a crash: its records were never made durable
        return data[:_ID_BYTES], data[_ID_BYTES:]

    def token(self, entity: str, key: Any) -> str:
        """The logged form of one key of a subject (creates the subject's key if needed)."""
        cached = self._cache.get((entity, key))
        if cached is not None:
            return cached
        found = self.lookup(entity, key) or self._create(self.path(entity, key))
        tok = token_for(found[0], found[1], entity, key)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[(entity, key)] = tok
        return tok

    def _create(self, path: Path) -> tuple[bytes, bytes]:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        data = os.urandom(_ID_BYTES + _KEY_BYTES)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)  # left by a crash of this pid's predecessor
        write_private(tmp, data)
        try:
            os.link(tmp, path)  # atomic: another worker may have created it meanwhile
        except FileExistsError:
            existing = path.read_bytes()
            if len(existing) == len(data):
                data = existing
            else:
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self._unsynced.append(path)
        self.created += 1
        return data[:_ID_BYTES], data[_ID_BYTES:]

    def refresh(self) -> bool:
        """Forget cached tokens if a subject was erased since the last call (one ``stat``)."""
        try:
            size = self._erased.stat().st_size
        except FileNotFoundError:
            size = 0
        if size == self._erased_size:
            return False
        self._erased_size = size
        self._cache.clear()
        return True

    def sync(self) -> None:
        """Make the keys created since the last call durable (before the log records that
        use them are fsynced)."""
        if not self._unsynced:
            return
        dirs = {p.parent for p in self._unsynced}
        for p in [*self._unsynced, *dirs]:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._unsynced.clear()

    def erase(self, entity: str, key: Any) -> bool:
        """Destroy the subject's key (overwritten, fsynced, unlinked) and note the erasure in
        ``erased.log``; False when no key is stored for it."""
        path = self.path(entity, key)
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            return False
        try:
            os.write(fd, bytes(_ID_BYTES + _KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        path.unlink()
        with self._erased.open("a") as f:
            f.write(f"{path.stem}\n")
            f.flush()
            os.fsync(f.fileno())
        self._cache.pop((entity, key), None)
        return True


def token_for(subject_id: bytes, subject_key: bytes, entity: str, key: Any) -> str:
    """``"pii1:<subject id hex>:<BLAKE2b-128(subject key, msgpack([entity, key])) hex>"``."""
    tag = hashlib.blake2b(subject_bytes(entity, key), digest_size=16, key=subject_key).hexdigest()
    return f"pii1:{subject_id.hex()}:{tag}"


class PiiPolicy:
    """Rewrites the keys of a decision before they are logged (the writer's side path)."""

    def __init__(self, entities: Sequence[EntitySpec], used: Sequence[str],
                 subject_keys: SubjectKeys | None) -> None:
        self.modes: dict[str, str] = {e.name: e.pii_mode for e in entities if e.pii}
        hashed = sorted(n for n, m in self.modes.items() if m == "hash")
        if hashed and subject_keys is None:
            raise AuditError(f"entities {hashed} are marked pii_mode = 'hash': the audit log needs a "
                             "subject key directory (--audit-subject-keys)", Code.PII_KEYS_MISSING)
        self.subject_keys = subject_keys
        # Scalar and sequence keys belong to the one entity the service looks up.
        self._single = used[0] if len(used) == 1 else None

    @property
    def active(self) -> bool:
        """Some entity's keys are rewritten."""
        return bool(self.modes)

    def apply(self, keys: Any) -> Any:
        """The loggable form of ``keys`` (a key, a sequence of keys, or entity -> either)."""
        if isinstance(keys, Mapping):
            return {e: self._value(e, v) for e, v in keys.items()}
        if self._single is None:
            return keys
        return self._value(self._single, keys)

    def _value(self, entity: str, v: Any) -> Any:
        mode = self.modes.get(entity)
        if isinstance(v, np.ndarray | np.generic):
            v = v.tolist()
        if mode is None:
            return v
        if isinstance(v, list | tuple):
            return [self._scalar(mode, entity, x) for x in v]
        return self._scalar(mode, entity, v)

    def _scalar(self, mode: str, entity: str, key: Any) -> str | None:
        if mode == "drop":
            return None
        assert self.subject_keys is not None
        return self.subject_keys.token(entity, key)
