"""The Open Inference Protocol (KServe / Triton v2 REST) mapped onto tailguard's wire messages.

``OipModel`` is built once per app from its ``Welcome`` and the spec's entity key types; it
turns an infer body into one ``wire.Request`` (``decode``) and a ``wire.Reply`` back into an
OIP response body (``encode_reply``).  Pure functions of bytes: no I/O, no clock, so the
mapping is unit- and fuzz-tested without a server (``serve/http.py`` does the transport).

Mapping: the entity input(s) give the keys (shape ``[1]``: one request; ``[n]`` or ``[n, 1]``
with n > 1: one batch request); every other input is a context field (one value, or one per
row).  ``parameters.priority`` is a class name or a Triton level (1 = highest, 0 = default);
``parameters.timeout`` is the budget in µs (Triton's unit); ``parameters.client_id`` names
the client for rate limiting.  Triton's binary tensor extension is accepted on input.

Every refusal is an ``OipError`` carrying a wire ``Status`` and the field at fault; its HTTP
code comes from ``HTTP_STATUS``.  Owner: the event loop thread (the encoders are reused).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

from tailguard.schema.wire import TIMING_NAMES, Reply, Request, Status, Welcome
from tailguard.serve.tensors import Datatype, OipError, flatten, from_binary, int_keys, numbers, str_keys

__all__ = ["HTTP_STATUS", "Call", "InferRequest", "OipModel", "error_body", "oip_field"]

#: HTTP code of each non-OK wire status (the table in docs/http.md).
HTTP_STATUS: dict[Status, int] = {s: 400 for s in Status if 10 <= s < 20}
HTTP_STATUS.update({
    Status.OK: 200, Status.UNKNOWN_MODEL: 404, Status.FRAME_TOO_LARGE: 413,
    Status.QUEUE_FULL: 429, Status.RATE_LIMITED: 429, Status.PREDICTED_LATE: 429,
    Status.SHED_OVERLOAD: 429, Status.EXPIRED: 504, Status.DRAINING: 503,
    Status.MODEL_ERROR: 500, Status.BUDGET_EXHAUSTED: 500, Status.INTERNAL: 500,
})


class TensorParameters(msgspec.Struct, frozen=True):
    """Per-tensor parameters we read (others are ignored, as OIP allows)."""

    binary_data_size: Annotated[int, msgspec.Meta(ge=0)] | None = None


class InferInput(msgspec.Struct, frozen=True):
    """One input tensor; ``data`` is flat or nested row-major (absent with binary data)."""

    name: str
    shape: list[Annotated[int, msgspec.Meta(ge=0)]]
    datatype: Datatype
    data: Any = None
    parameters: TensorParameters | None = None


class RequestedOutput(msgspec.Struct, frozen=True):
    """An output the client asks for (all outputs when the list is absent)."""

    name: str
    parameters: dict[str, Any] | None = None


class InferParameters(msgspec.Struct, frozen=True):
    """Request parameters we read: priority (class name or level), timeout (µs), client id."""

    priority: str | int = ""
    timeout: Annotated[int, msgspec.Meta(ge=0, le=2**53)] = 0
    client_id: str = ""


class InferRequest(msgspec.Struct, frozen=True):
    """The body of ``POST /v2/models/{name}/infer``."""

    inputs: list[InferInput]
    id: str = ""
    outputs: list[RequestedOutput] | None = None
    parameters: InferParameters | None = None


class Call(msgspec.Struct, gc=False):
    """What an exchange remembers to answer in OIP terms: the client's id, whether the request
    was a batch, and the output indices asked for."""

    oip_id: str
    batch: bool
    select: tuple[int, ...]


class _Tensor(msgspec.Struct, gc=False):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class _ReplyParameters(msgspec.Struct, gc=False):
    status: str
    answered_by: str
    rung: str | list[str]
    flags: int | list[int]
    timings_ns: dict[str, int]


class _Response(msgspec.Struct, gc=False, kw_only=True, omit_defaults=True):
    model_name: str
    model_version: str
    id: str = ""
    outputs: list[_Tensor]
    parameters: _ReplyParameters


class _Error(msgspec.Struct, gc=False):
    error: str
    code: str
    field: str = ""


_encode = msgspec.json.Encoder().encode


def oip_field(field: str) -> str:
    """A wire request field named in OIP terms (``context.price`` -> ``inputs.price``)."""
    head, _, rest = field.partition(".")
    if head in ("context", "keys"):
        return f"inputs.{rest}" if rest else "inputs"
    return _PARAMETER_FIELDS.get(field, field)


_PARAMETER_FIELDS = {"priority": "parameters.priority", "budget_us": "parameters.timeout",
                     "client_id": "parameters.client_id"}


def error_body(code: str, message: str, field: str = "") -> bytes:
    """The JSON body of a refusal: ``{"error", "code", "field"}``; ``code`` is a wire
    ``Status.code`` or, for HTTP-level refusals, e.g. ``"not_found"``."""
    return _encode(_Error(message, code, field))


class OipModel:
    """The OIP view of one service: metadata documents and the infer mapping."""

    def __init__(self, welcome: Welcome, key_dtypes: Mapping[str, str], server_version: str) -> None:
        self.name = welcome.service
        self.version = welcome.model_version
        self.outputs = tuple(welcome.outputs)
        self.rungs = tuple(welcome.rungs)
        self.priorities = tuple(welcome.priorities)
        self.entities = tuple(welcome.entities)
        self.context = tuple(welcome.context)
        is_int = {e: key_dtypes.get(e, "str") == "int64" for e in self.entities}
        self._key_checks = {e: int_keys if is_int[e] else str_keys for e in self.entities}
        self._context_set = frozenset(self.context)
        self._all = tuple(range(len(self.outputs)))
        self._output_index = {n: i for i, n in enumerate(self.outputs)}
        self._decoder = msgspec.json.Decoder(InferRequest)
        self.name_json = _encode(self.name)
        ins = [{"name": e, "datatype": "INT64" if is_int[e] else "BYTES", "shape": [-1]}
               for e in self.entities]
        ins += [{"name": c, "datatype": "FP64", "shape": [-1]} for c in self.context]
        self.metadata = _encode({
            "name": self.name, "versions": [self.version], "platform": "tailguard", "inputs": ins,
            "outputs": [{"name": o, "datatype": "FP64", "shape": [-1]} for o in self.outputs],
        })
        self.server_metadata = _encode({
            "name": "tailguard", "version": server_version,
            "extensions": ["binary_tensor_data", "parameters"],
        })

    # -- request ---------------------------------------------------------------------------
    def decode(self, body: bytes, header_len: int | None, wire_id: int, client_id: str = "",
               traceparent: str = "") -> tuple[Request, Call]:
        """One infer body -> (wire request, call); raises ``OipError``.  ``header_len`` is the
        Inference-Header-Content-Length (JSON part) when binary tensors follow."""
        head = body if header_len is None else body[:header_len]
        if header_len is not None and header_len > len(body):
            raise OipError(Status.MALFORMED, "Inference-Header-Content-Length exceeds the body")
        try:
            req = self._decoder.decode(head)
        except msgspec.ValidationError as exc:
            raise OipError(Status.INVALID_REQUEST, f"invalid infer request: {exc}", _path(exc)) from None
        except (msgspec.DecodeError, RecursionError) as exc:
            raise OipError(Status.MALFORMED, f"invalid JSON: {exc}") from None
        binary = memoryview(body)[header_len:] if header_len is not None else None
        keys: dict[str, list[Any]] = {}
        ctx: dict[str, list[float]] = {}
        offset = 0
        for inp in req.inputs:
            name = inp.name
            if name in keys or name in ctx:
                raise OipError(Status.INVALID_REQUEST, f"input {name!r} given twice", f"inputs.{name}")
            size = inp.parameters.binary_data_size if inp.parameters is not None else None
            if size is not None:
                if binary is None or offset + size > len(binary):
                    raise OipError(Status.MALFORMED, f"input {name!r}: binary data missing", f"inputs.{name}")
                values = from_binary(inp.datatype, binary[offset : offset + size], name)
                offset += size
            elif inp.data is None:
                raise OipError(Status.INVALID_REQUEST, f"input {name!r} has no data", f"inputs.{name}")
            else:
                values = flatten(inp.data, name)
            if math.prod(inp.shape) != len(values):
                raise OipError(Status.INVALID_REQUEST, f"input {name!r}: shape {inp.shape} does not match "
                               f"{len(values)} values", f"inputs.{name}.shape")
            check = self._key_checks.get(name)
            if check is not None:
                keys[name] = check(inp.datatype, _key_shape(inp, values), name)
            elif name in self._context_set:
                ctx[name] = numbers(inp.datatype, values, name)
            else:
                raise OipError(Status.INVALID_REQUEST, f"unknown input {name!r}; this model takes "
                               f"{list(self.entities + self.context)}", f"inputs.{name}")
        if binary is not None and offset != len(binary):
            raise OipError(Status.MALFORMED, "binary data left over after the last input")
        if len(keys) != len(self.entities) or len(ctx) != len(self.context):
            for e in self.entities + self.context:
                if e not in keys and e not in ctx:
                    raise OipError(Status.INVALID_REQUEST, f"missing input {e!r}", f"inputs.{e}")
        return self._request(req, keys, ctx, wire_id, client_id, traceparent)

    def _request(self, req: InferRequest, keys: dict[str, list[Any]], ctx: dict[str, list[float]],
                 wire_id: int, client_id: str, traceparent: str) -> tuple[Request, Call]:
        counts = {len(v) for v in keys.values()}
        n = counts.pop() if len(counts) == 1 else -1
        if n < 1:
            raise OipError(Status.INVALID_REQUEST, "entity inputs need the same, non-zero number of keys",
                           "inputs")
        batch = n > 1
        context: dict[str, Any] = {}
        for c, v in ctx.items():
            if len(v) != 1 and len(v) != n:
                raise OipError(Status.INVALID_REQUEST, f"input {c!r} needs 1 or {n} values, got {len(v)}",
                               f"inputs.{c}")
            context[c] = v if batch and len(v) == n else v[0]
        if len(self.entities) == 1:
            k: Any = keys[self.entities[0]] if batch else keys[self.entities[0]][0]
        else:
            k = {e: (v if batch else v[0]) for e, v in keys.items()}
        p = req.parameters or _NO_PARAMETERS
        priority = p.priority
        if type(priority) is int:
            if not 0 <= priority <= len(self.priorities):
                raise OipError(Status.UNKNOWN_PRIORITY, f"priority level {priority} is not in 0.."
                               f"{len(self.priorities)} (levels of {list(self.priorities)})",
                               "parameters.priority")
            priority = self.priorities[priority - 1] if priority else ""
        select = self._all
        if req.outputs is not None:
            try:
                select = tuple(self._output_index[o.name] for o in req.outputs)
            except KeyError as exc:
                raise OipError(Status.INVALID_REQUEST, f"unknown output {exc.args[0]!r}; this model has "
                               f"{list(self.outputs)}", "outputs") from None
        wire = Request(wire_id, k, context or None, str(priority), p.timeout, p.client_id or client_id,
                       batch, traceparent=traceparent)
        return wire, Call(req.id, batch, select)

    # -- reply -----------------------------------------------------------------------------
    def encode_reply(self, reply: Reply, call: Call) -> bytes:
        """The OIP response body of an OK reply (non-OK replies take ``error_body``)."""
        k = len(self.outputs)
        n = reply.rows
        flat = reply.outputs
        names = self.outputs
        tensors = [_Tensor(names[j], [n], "FP64", flat if k == 1 else flat[j::k]) for j in call.select]
        rungs = self.rungs
        try:
            rung: str | list[str] = ([rungs[r] for r in reply.rungs] if call.batch
                                     else rungs[reply.rungs[0]])
        except IndexError:
            rung = [] if call.batch else ""
        flags: int | list[int] = reply.flags if call.batch else (reply.flags[0] if reply.flags else 0)
        params = _ReplyParameters("ok", reply.model_version, rung, flags,
                                  dict(zip(TIMING_NAMES, reply.timings_ns, strict=False)))
        return _encode(_Response(model_name=self.name, model_version=self.version,
                                 id=call.oip_id, outputs=tensors, parameters=params))


_NO_PARAMETERS = InferParameters()


def _key_shape(inp: InferInput, values: list[Any]) -> list[Any]:
    """``values`` of an entity input, whose shape must be ``[n]`` or ``[n, 1]``."""
    shape = inp.shape
    if not 1 <= len(shape) <= 2 or (len(shape) == 2 and shape[1] != 1):
        raise OipError(Status.INVALID_REQUEST, f"entity input {inp.name!r} must have shape [n] or [n, 1]",
                       f"inputs.{inp.name}.shape")
    return values


def _path(exc: msgspec.ValidationError) -> str:
    """The ``$.inputs[0].name`` suffix of a msgspec message as ``inputs[0].name``."""
    text = str(exc)
    at = text.rfind("at `$")
    return text[at + 5 :].strip("`.") if at >= 0 else ""
