"""Reading the replies of one pipelined read: N ``HMGET`` replies, sans-IO, regular ones in one numpy step.

**The regular case** (two keys or more).  Every stored value of a view has one size
(``codec``: 16 + 4·width bytes), so when every requested value is present the N replies of
a view set are N copies of one *record*: ``*m\\r\\n`` then, per view,
``$<size>\\r\\n<value>\\r\\n``.  ``ReplyShape`` knows that record: its length, its framing
bytes (everything but the values) and a structured numpy dtype over it.  ``HmgetReplies``
checks the framing of what has arrived against the tiled record, vectorised, chunk by chunk;
when the reply is the full size and every framing byte matches, the parse is exactly the
record's (a RESP parse is determined by its framing bytes), and the values are read with one
``np.frombuffer``: no per-key Python objects.  A one-key read goes to the general parser
at once (the numpy checks' fixed cost is larger than parsing one reply).

**Anything else** (a missing value, a value of the wrong size, an error reply, a setup reply
that is not ``+OK``) shows up as a framing mismatch the moment its bytes arrive, and the
reader hands everything received to a general parser: hiredis' C reader when the ``hiredis``
package is installed (the ``redis`` extra pulls it in), else ``HmgetParser`` (pure Python).
Both yield per-key lists that ``codec.place`` decodes value by value.

A ``Fetched`` is the result either way; its records view the reader's own buffer (a caller's
receive buffer is copied into it, so the caller may reuse that at once).
Objects here are owned by one thread (or loop) at a time.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from tailguard.features.online.codec import HEADER_BYTES
from tailguard.features.online.errors import FeatureStoreError

_hiredis: Any
try:  # the C reader is optional: the ``redis`` extra installs it, the pure-Python parser stands in
    import hiredis as _hiredis
except ImportError:  # pragma: no cover - the tests cover this branch by setting ``_hiredis = None``
    _hiredis = None

__all__ = [
    "Fetched",
    "HmgetParser",
    "HmgetReplies",
    "ProtocolError",
    "ReplyShape",
    "Replies",
    "parser_kind",
    "reply_shape",
]

_CRLF = b"\r\n"
_OK = b"+OK\r\n"

#: Per-key ``HMGET`` replies as lists (``None`` where the hash has no such field).
Replies = list[list[bytes | None]]


class ProtocolError(FeatureStoreError):
    """The server sent bytes that are not the reply this wire expects."""


def parser_kind() -> str:
    """``"hiredis"`` when the C reader is installed (the general parser used), else ``"python"``."""
    return "hiredis" if _hiredis is not None else "python"


class ReplyShape:
    """The regular reply record of one view set (every value present, of its view's size)."""

    __slots__ = ("dtype", "frame_bytes", "frame_idx", "m", "names", "record", "slices", "template")

    def __init__(self, widths: Sequence[int]) -> None:
        self.m = len(widths)
        parts = [b"*%d\r\n" % self.m]
        pos = len(parts[0])
        names: list[str] = []
        formats: list[Any] = []
        offsets: list[int] = []
        slices: list[tuple[int, int]] = []
        for j, w in enumerate(widths):
            size = HEADER_BYTES + 4 * w
            head = b"$%d\r\n" % size
            parts += [head, bytes(size), _CRLF]
            pos += len(head)
            names += [f"w{j}", f"v{j}"]
            formats += ["<i8", ("<f4", (w,))]
            offsets += [pos, pos + 8 + 8]
            slices.append((pos, pos + size))
            pos += size + 2
        #: Bytes of one record; the template has zeros where the values go.
        self.record = pos
        self.template = np.frombuffer(b"".join(parts), dtype=np.uint8)
        framing = np.ones(pos, dtype=bool)
        for lo, hi in slices:
            framing[lo:hi] = False
        self.frame_idx = np.flatnonzero(framing)
        self.frame_bytes = self.template[self.frame_idx]
        self.slices = tuple(slices)
        #: Per view: the record's field names of its write time and of its values.
        self.names = tuple((f"w{j}", f"v{j}") for j in range(self.m))
        #: A record as numpy sees it: ``w<j>`` the write time and ``v<j>`` the float32 row of view j.
        self.dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": pos})

    def matches(self, buf: np.ndarray) -> bool:
        """True when ``buf`` (uint8, a whole number of records) has every framing byte of the record."""
        recs = buf.reshape(-1, self.record)
        return bool((recs[:, self.frame_idx] == self.frame_bytes).all())

    def prefix_matches(self, part: np.ndarray) -> bool:
        """True when ``part`` (uint8, shorter than a record) agrees with the record's framing so far."""
        k = int(np.searchsorted(self.frame_idx, len(part)))
        return bool((part[self.frame_idx[:k]] == self.frame_bytes[:k]).all())


@functools.lru_cache(maxsize=256)
def reply_shape(widths: tuple[int, ...]) -> ReplyShape:
    """The (shared, immutable) ``ReplyShape`` of views of these widths, in order."""
    return ReplyShape(widths)


class Fetched:
    """The replies of one read: ``records`` (structured, regular case) or ``replies`` (lists)."""

    __slots__ = ("n", "records", "replies", "shape")

    def __init__(
        self, shape: ReplyShape, n: int, records: np.ndarray | None, replies: Replies | None
    ) -> None:
        self.shape = shape
        self.n = n
        self.records = records
        self.replies = replies

    def lists(self) -> Replies:
        """Per-key lists of raw values, whichever way the replies were read."""
        if self.replies is not None:
            return self.replies
        assert self.records is not None
        raw = self.records.tobytes()
        size, sl = self.shape.record, self.shape.slices
        return [[raw[o + lo : o + hi] for lo, hi in sl] for o in range(0, self.n * size, size)]


class HmgetParser:
    """Incremental pure-Python parser of ``n`` HMGET replies of ``m`` fields each, after ``skip`` status
    lines (the fallback general parser when hiredis is not installed)."""

    __slots__ = ("_cur", "_m", "_n", "_pos", "_skip", "buf", "replies")

    def __init__(self, n: int, m: int, skip: int = 0) -> None:
        self._n = n
        self._m = m
        self._skip = skip
        self._pos = 0
        self._cur: list[bytes | None] | None = None
        self.buf = b""
        self.replies: Replies = []

    def feed(self, data: bytes) -> bool:
        """Add received bytes; True once every reply is complete (then read ``replies``)."""
        buf = self.buf = self.buf + data if self.buf else data
        pos, cur, out, m = self._pos, self._cur, self.replies, self._m
        while self._skip:
            e = buf.find(_CRLF, pos)
            if e < 0:
                self._pos = pos
                return False
            if buf[pos] != 0x2B:  # '+': AUTH/SELECT answered OK
                raise FeatureStoreError(f"connection setup failed: {buf[pos:e].decode(errors='replace')}")
            pos = e + 2
            self._skip -= 1
        while len(out) < self._n:
            if cur is None:
                e = buf.find(_CRLF, pos)
                if e < 0:
                    break
                kind = buf[pos]
                if kind == 0x2A and int(buf[pos + 1 : e]) == m:  # '*m'
                    cur = []
                    pos = e + 2
                elif kind == 0x2D:  # '-ERR ...' for this key (e.g. WRONGTYPE): fail the read
                    text = buf[pos + 1 : e].decode(errors="replace")
                    raise FeatureStoreError(f"online store error: {text}")
                else:
                    raise ProtocolError(f"unexpected reply {buf[pos:e][:40]!r} to HMGET")
            while len(cur) < m:
                e = buf.find(_CRLF, pos)
                if e < 0:
                    break
                if buf[pos] != 0x24:  # '$'
                    raise ProtocolError(f"unexpected element {buf[pos:e][:40]!r} in an HMGET reply")
                size = int(buf[pos + 1 : e])
                if size < 0:
                    cur.append(None)
                    pos = e + 2
                    continue
                end = e + 2 + size
                if end + 2 > len(buf):
                    break
                cur.append(buf[e + 2 : end])
                pos = end + 2
            if len(cur) < m:
                break
            out.append(cur)
            cur = None
        self._pos, self._cur = pos, cur
        return len(out) == self._n


class _HiredisParser:
    """``HmgetParser``'s contract over hiredis' C reader (errors come back as values, checked here)."""

    __slots__ = ("_m", "_n", "_reader", "_skip", "replies")

    def __init__(self, n: int, m: int, skip: int = 0) -> None:
        assert _hiredis is not None
        self._reader = _hiredis.Reader()
        self._n, self._m, self._skip = n, m, skip
        self.replies: Replies = []

    def feed(self, data: bytes) -> bool:
        reader, out = self._reader, self.replies
        try:
            reader.feed(data)
            while len(out) < self._n:
                x = reader.gets()
                if x is False:
                    return False
                if self._skip:
                    if x != b"OK":
                        raise FeatureStoreError(f"connection setup failed: {x}")
                    self._skip -= 1
                elif type(x) is list and len(x) == self._m and all(v is None or type(v) is bytes for v in x):
                    out.append(x)
                elif isinstance(x, _hiredis.ReplyError):
                    raise FeatureStoreError(f"online store error: {x}")
                else:
                    raise ProtocolError(f"unexpected reply {str(x)[:40]!r} to HMGET")
        except _hiredis.ProtocolError as exc:
            raise ProtocolError(f"not a RESP reply: {exc}") from exc
        return True


class HmgetReplies:
    """Sans-IO reader of ``n`` HMGET replies of view set ``shape`` after ``skip`` ``+OK`` setup replies.

    ``feed`` received bytes until it returns True, then take ``result()``.  Raises
    ``FeatureStoreError`` on an error reply (or a failed setup) and ``ProtocolError`` on bytes
    that are no HMGET reply; after either, the stream is out of step (close the connection).
    """

    __slots__ = ("_buf", "_checked", "_expected", "_fallback", "_n", "_prefix", "_shape", "_size")

    def __init__(self, shape: ReplyShape, n: int, skip: int = 0) -> None:
        self._shape = shape
        self._n = n
        self._prefix = len(_OK) * skip
        self._expected = self._prefix + n * shape.record
        self._buf = bytearray()
        self._size = 0
        self._checked = 0  # bytes of ``_buf`` found to agree with the regular reply so far
        self._fallback: HmgetParser | _HiredisParser | None = None
        if not shape.m:
            raise ValueError("an HMGET names at least one field")
        if n == 1:  # one entity: the numpy checks' fixed cost (~5 µs) exceeds a general parse of one reply
            self._fallback = self._general()

    def _general(self) -> HmgetParser | _HiredisParser:
        cls = _HiredisParser if _hiredis is not None else HmgetParser
        return cls(self._n, self._shape.m, self._prefix // len(_OK))

    def feed(self, data: bytes | bytearray | memoryview) -> bool:
        """Add received bytes; True once all ``n`` replies are complete."""
        if self._fallback is not None:
            return self._fallback.feed(bytes(data))
        self._buf += data
        self._size += len(data)
        if self._regular_so_far():
            return self._size == self._expected
        self._fallback = self._general()
        return self._fallback.feed(bytes(self._buf))

    def _regular_so_far(self) -> bool:
        size, prefix, shape = self._size, self._prefix, self._shape
        if size > self._expected:
            return False
        buf = self._buf
        if self._checked < prefix:
            k = min(size, prefix)
            if buf[:k] != (_OK * (prefix // len(_OK)))[:k]:
                return False
            self._checked = k
            if size <= prefix:
                return True
        rec = shape.record
        start = self._checked - prefix  # a whole number of checked records
        whole = (size - prefix - start) // rec * rec
        arr = np.frombuffer(buf, dtype=np.uint8, count=size - prefix - start, offset=prefix + start)
        if whole and not shape.matches(arr[:whole]):
            return False
        self._checked = prefix + start + whole
        part = arr[whole:]
        return not len(part) or shape.prefix_matches(part)

    def result(self) -> Fetched:
        """The replies, once ``feed`` returned True."""
        if self._fallback is not None:
            return Fetched(self._shape, self._n, None, self._fallback.replies)
        # A view of this reader's own buffer (the caller's receive buffer was copied into it).
        records = np.frombuffer(self._buf, dtype=self._shape.dtype, count=self._n, offset=self._prefix)
        return Fetched(self._shape, self._n, records, None)
