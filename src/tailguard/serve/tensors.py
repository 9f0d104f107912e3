"""Open Inference Protocol tensors: datatypes and the values of one input, checked.

An OIP input's values come either as JSON ``data`` (a scalar, a flat row-major list, or
nested lists) or, with Triton's binary tensor extension, as raw little-endian bytes after
the JSON header (``BYTES`` elements: a 4-byte little-endian length, then UTF-8).  These
functions turn either into a flat Python list and check it for its role: entity keys
(``str`` or int64) or context numbers (floats).  Every refusal is an ``OipError`` carrying
the wire ``Status`` and the field at fault (``inputs.<name>...``).

Pure functions, no state: callable from any thread.
"""

from __future__ import annotations

import enum
from typing import Any

import numpy as np

from tailguard.schema.wire import Status

__all__ = ["Datatype", "OipError", "flatten", "from_binary", "int_keys", "numbers", "str_keys"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_FLOAT_INT = 2**1023  # larger integers overflow a float
#: Deepest nesting of JSON ``data`` accepted (an OIP tensor has a handful of dimensions).
_MAX_NESTING = 32


class OipError(Exception):
    """A request the OIP mapping refuses: wire ``status``, message and the field at fault."""

    def __init__(self, status: Status, message: str, field: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.field = field


class Datatype(enum.Enum):
    """OIP tensor datatypes (``BYTES`` carries strings in JSON)."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"


_INTS = frozenset(d for d in Datatype if "INT" in d.value)
_NUMERIC = _INTS | {Datatype.FP16, Datatype.FP32, Datatype.FP64}
_NUMPY = {d: np.dtype(d.value.lower().replace("fp", "float")).newbyteorder("<") for d in _NUMERIC}


def _bad(name: str, message: str, where: str = ".data") -> OipError:
    return OipError(Status.INVALID_REQUEST, f"input {name!r}: {message}", f"inputs.{name}{where}")


def flatten(data: Any, name: str) -> list[Any]:
    """Row-major flat values of ``data`` (a scalar, a flat list or nested lists)."""
    if type(data) is not list:
        return [data]
    for x in data:
        if type(x) is list:
            break
    else:
        return data  # the common case: already flat
    out: list[Any] = []
    stack = [iter(data)]
    while stack:  # iterative, so hostile nesting cannot exhaust the interpreter stack
        for x in stack[-1]:
            if type(x) is list:
                if len(stack) >= _MAX_NESTING:
                    raise _bad(name, "data is nested too deeply")
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out


def numbers(dt: Datatype, values: list[Any], name: str) -> list[float]:
    """``values`` of a numeric tensor as floats (context fields are float64 downstream)."""
    if dt is not Datatype.FP64 and dt not in _NUMERIC:  # `is` first: enum hashing is slow
        raise _bad(name, f"must be numeric (FP64, FP32, INT64, ...), not {dt.value}", ".datatype")
    out: list[float] = []
    for v in values:
        t = type(v)
        if t is float:
            out.append(v)
        elif t is int:
            if not -_FLOAT_INT <= v <= _FLOAT_INT:
                raise _bad(name, "number out of range")
            out.append(float(v))
        else:  # bool and str are refused, as the engine would
            raise _bad(name, f"values must be numbers, got {t.__name__}")
    return out


def str_keys(dt: Datatype, values: list[Any], name: str) -> list[Any]:
    """``values`` as string entity keys (datatype ``BYTES``)."""
    if dt is not Datatype.BYTES:
        raise _bad(name, f"entity keys are strings: datatype must be BYTES, not {dt.value}", ".datatype")
    for v in values:
        if type(v) is not str:
            raise _bad(name, f"keys must be strings, got {type(v).__name__}")
    return values


def int_keys(dt: Datatype, values: list[Any], name: str) -> list[Any]:
    """``values`` as int64 entity keys (any integer datatype)."""
    if dt not in _INTS:
        raise _bad(name, f"entity keys are integers: datatype must be INT64, not {dt.value}", ".datatype")
    for v in values:
        if type(v) is not int or not _INT64_MIN <= v <= _INT64_MAX:
            raise _bad(name, f"keys must be int64, got {v!r:.40}")
    return values


def from_binary(dt: Datatype, raw: memoryview, name: str) -> list[Any]:
    """Flat values of one tensor sent with the binary tensor extension."""
    if dt is Datatype.BYTES:
        out: list[Any] = []
        i, end = 0, len(raw)
        while i < end:
            size = int.from_bytes(raw[i : i + 4], "little") if i + 4 <= end else -1
            if size < 0 or i + 4 + size > end:
                raise OipError(Status.MALFORMED, f"input {name!r}: truncated BYTES element", f"inputs.{name}")
            try:
                out.append(bytes(raw[i + 4 : i + 4 + size]).decode())
            except UnicodeDecodeError:
                raise _bad(name, "BYTES elements must be UTF-8") from None
            i += 4 + size
        return out
    npdt = _NUMPY.get(dt)
    if npdt is None or len(raw) % npdt.itemsize:
        raise OipError(Status.MALFORMED, f"input {name!r}: {len(raw)} bytes do not hold {dt.value} values",
                       f"inputs.{name}")
    values: list[Any] = np.frombuffer(raw, dtype=npdt).tolist()
    return values
