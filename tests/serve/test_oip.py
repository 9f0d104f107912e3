"""The Open Inference Protocol mapping: OIP JSON <-> wire requests and replies (no server)."""

from __future__ import annotations

import json
import struct
from typing import Any

import msgspec
import pytest

from tailguard.schema.wire import Reply, Request, Status, Welcome
from tailguard.serve.oip import HTTP_STATUS, Call, OipModel, error_body, oip_field
from tailguard.serve.tensors import OipError

RUNGS = ["primary", "fast", "last_good", "default"]
CLASSES = ["critical", "normal", "bulk"]


def welcome(entities: list[str] | None = None, outputs: list[str] | None = None) -> Welcome:
    return Welcome(1, "tailguard/test", "toy", 1 << 20, 0, entities or ["item"], ["price", "size"],
                   outputs or ["p"], RUNGS, CLASSES, "7")


TOY = OipModel(welcome(), {"item": "str"}, "0.1.0")


def inp(name: str, data: Any, shape: list[int] | None = None, datatype: str = "FP64") -> dict[str, Any]:
    n = len(data) if isinstance(data, list) else 1
    return {"name": name, "shape": shape if shape is not None else [n], "datatype": datatype, "data": data}


def body(keys: Any = ("a",), price: Any = (1.5,), size: Any = (2.0,), **top: Any) -> bytes:
    keys = list(keys)
    inputs = [inp("item", keys, datatype="BYTES"), inp("price", list(price)), inp("size", list(size))]
    return json.dumps({"inputs": inputs, **top}).encode()


def decode(raw: bytes, model: OipModel = TOY, **kw: Any) -> tuple[Request, Call]:
    return model.decode(raw, kw.pop("header_len", None), 9, **kw)


def refusal(raw: bytes, model: OipModel = TOY, **kw: Any) -> OipError:
    with pytest.raises(OipError) as info:
        decode(raw, model, **kw)
    return info.value


# -- requests ----------------------------------------------------------------------------------------
def test_one_key_makes_a_single_request_with_scalar_context() -> None:
    req, call = decode(body(id="r-1"))
    assert (req.id, req.keys, req.context, req.batch) == (9, "a", {"price": 1.5, "size": 2.0}, False)
    assert (call.oip_id, call.batch, call.select) == ("r-1", False, (0,))


def test_several_keys_make_one_batch_request_with_context_columns() -> None:
    req, call = decode(body(["a", "b", "c"], [1.0, 2.0, 3.0], [4.0]))
    assert req.batch and call.batch and req.keys == ["a", "b", "c"]
    assert req.context == {"price": [1.0, 2.0, 3.0], "size": 4.0}  # one value broadcasts


def test_nested_data_is_read_row_major() -> None:
    raw = json.dumps({"inputs": [inp("item", [["a"], ["b"]], [2, 1], "BYTES"),
                                 inp("price", [[1], [2]], [2, 1]), inp("size", [[3.0, 4.0]], [1, 2])]})
    req, _ = decode(raw.encode())
    assert req.keys == ["a", "b"] and req.context == {"price": [1.0, 2.0], "size": [3.0, 4.0]}


def test_context_integers_become_floats() -> None:
    req, _ = decode(body(price=[3], size=[4]))
    assert req.context is not None and type(req.context["price"]) is float


def test_parameters_set_priority_budget_and_client() -> None:
    params = {"priority": "critical", "timeout": 1500, "client_id": "desk-7"}
    req, _ = decode(body(parameters=params), client_id="header-client", traceparent="00-ab-cd-01")
    assert (req.priority, req.budget_us, req.client_id, req.traceparent) == (
        "critical", 1500, "desk-7", "00-ab-cd-01")


def test_the_client_header_names_the_client_when_parameters_do_not() -> None:
    req, _ = decode(body(), client_id="header-client")
    assert req.client_id == "header-client"


@pytest.mark.parametrize(("level", "name"), [(0, ""), (1, "critical"), (3, "bulk")])
def test_a_triton_priority_level_names_the_class(level: int, name: str) -> None:
    req, _ = decode(body(parameters={"priority": level}))
    assert req.priority == name


def test_a_priority_level_out_of_range_is_refused() -> None:
    err = refusal(body(parameters={"priority": 4}))
    assert (err.status, err.field) == (Status.UNKNOWN_PRIORITY, "parameters.priority")


def test_unknown_parameters_are_ignored() -> None:
    req, _ = decode(body(parameters={"sequence_id": 3, "binary_data_output": True}))
    assert req.priority == "" and req.budget_us == 0


def test_requested_outputs_select_and_order_the_outputs() -> None:
    model = OipModel(welcome(outputs=["p", "q", "r"]), {}, "0")
    _, call = decode(body(outputs=[{"name": "r"}, {"name": "p"}]), model)
    assert call.select == (2, 0)


def int_body(keys: list[Any]) -> bytes:
    return json.dumps({"inputs": [inp("item", keys, datatype="INT64"), inp("price", [1.0]),
                                  inp("size", [1.0])]}).encode()


def test_int64_entities_take_integer_keys() -> None:
    model = OipModel(welcome(), {"item": "int64"}, "0")
    req, _ = decode(int_body([5, 6]), model)
    assert req.keys == [5, 6]


@pytest.mark.parametrize("key", ["5", 2**63, 1.0])
def test_int64_entities_refuse_other_keys(key: Any) -> None:
    model = OipModel(welcome(), {"item": "int64"}, "0")
    assert refusal(int_body([key]), model).field == "inputs.item.data"


def test_several_entities_make_keys_by_entity() -> None:
    model = OipModel(welcome(entities=["user", "item"]), {"user": "int64"}, "0")
    raw = json.dumps({"inputs": [inp("user", [1], datatype="INT64"), inp("item", ["x"], datatype="BYTES"),
                                 inp("price", [1.0]), inp("size", [1.0])]})
    req, _ = decode(raw.encode(), model)
    assert req.keys == {"user": 1, "item": "x"} and not req.batch


# -- refusals ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "status", "field"), [
    (b"{not json", Status.MALFORMED, ""),
    (b"[1, 2]", Status.INVALID_REQUEST, ""),
    (b'{"inputs": [{"name": 3, "shape": [1], "datatype": "FP64", "data": [1]}]}',
     Status.INVALID_REQUEST, "inputs[0].name"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP128", "data": [1]}]}',
     Status.INVALID_REQUEST, "inputs[0].datatype"),
    (b'{"inputs": [{"name": "x", "shape": [-1], "datatype": "FP64", "data": [1]}]}',
     Status.INVALID_REQUEST, "inputs[0].shape[0]"),
    (b'{"inputs": [], "parameters": {"timeout": -5}}', Status.INVALID_REQUEST, "parameters.timeout"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": '
     + b"[" * 100_000 + b"]" * 100_000 + b"}]}", Status.MALFORMED, ""),  # deeper than the decoder goes
])
def test_malformed_bodies_are_refused_naming_the_field(raw: bytes, status: Status, field: str) -> None:
    err = refusal(raw)
    assert (err.status, err.field) == (status, field)


def test_an_unknown_input_is_refused_by_name() -> None:
    raw = json.loads(body())
    raw["inputs"].append(inp("colour", [1.0]))
    err = refusal(json.dumps(raw).encode())
    assert err.field == "inputs.colour" and "unknown input 'colour'" in str(err)


@pytest.mark.parametrize(("drop", "field"), [(0, "inputs.item"), (1, "inputs.price")])
def test_a_missing_input_is_refused_by_name(drop: int, field: str) -> None:
    raw = json.loads(body())
    del raw["inputs"][drop]
    assert refusal(json.dumps(raw).encode()).field == field


@pytest.mark.parametrize(("change", "field"), [
    ({"shape": [2]}, "inputs.price.shape"),                      # shape disagrees with data
    ({"data": [True]}, "inputs.price.data"),                     # bool is not a number
    ({"data": ["1.5"]}, "inputs.price.data"),
    ({"datatype": "BYTES"}, "inputs.price.datatype"),
    ({"data": [10**400]}, "inputs.price.data"),                  # overflows a float
    ({"data": None}, "inputs.price"),
])
def test_a_bad_context_input_is_refused(change: dict[str, Any], field: str) -> None:
    raw = json.loads(body())
    raw["inputs"][1].update(change)
    assert refusal(json.dumps(raw).encode()).field == field


@pytest.mark.parametrize(("change", "field"), [
    ({"datatype": "FP64", "data": [1.0]}, "inputs.item.datatype"),
    ({"data": [7], "datatype": "BYTES"}, "inputs.item.data"),
    ({"shape": [1, 1, 1]}, "inputs.item.shape"),
    ({"shape": [0], "data": []}, "inputs"),
])
def test_bad_keys_are_refused(change: dict[str, Any], field: str) -> None:
    raw = json.loads(body())
    raw["inputs"][0].update(change)
    assert refusal(json.dumps(raw).encode()).field == field


def test_context_rows_must_match_the_keys() -> None:
    assert refusal(body(["a", "b", "c"], [1.0, 2.0])).field == "inputs.price"


def test_an_input_given_twice_is_refused() -> None:
    raw = json.loads(body())
    raw["inputs"].append(raw["inputs"][1])
    assert refusal(json.dumps(raw).encode()).field == "inputs.price"


def test_an_unknown_requested_output_is_refused() -> None:
    assert refusal(body(outputs=[{"name": "nope"}])).field == "outputs"


def test_hostile_nesting_is_refused_without_recursion() -> None:
    deep: Any = 1.0
    for _ in range(40):
        deep = [deep]
    raw = json.loads(body())
    raw["inputs"][1].update({"data": deep, "shape": [1] * 40})
    assert refusal(json.dumps(raw).encode()).field == "inputs.price.data"


# -- binary tensor extension -------------------------------------------------------------------------
def binary_body(keys: list[str], price: list[float], extra: bytes = b"") -> tuple[bytes, int]:
    kraw = b"".join(struct.pack("<I", len(k.encode())) + k.encode() for k in keys)
    praw = struct.pack(f"<{len(price)}d", *price)
    head = json.dumps({"inputs": [
        {"name": "item", "shape": [len(keys)], "datatype": "BYTES",
         "parameters": {"binary_data_size": len(kraw)}},
        {"name": "price", "shape": [len(price)], "datatype": "FP64",
         "parameters": {"binary_data_size": len(praw)}},
        inp("size", [2.0]),
    ]}).encode()
    return head + kraw + praw + extra, len(head)


def test_binary_tensors_decode_like_json() -> None:
    raw, n = binary_body(["a", "bé"], [1.5, 2.5])
    req, _ = decode(raw, header_len=n)
    expected, _ = decode(body(["a", "bé"], [1.5, 2.5]))
    assert req == expected


@pytest.mark.parametrize("cut", [1, 5])
def test_truncated_binary_data_is_malformed(cut: int) -> None:
    raw, n = binary_body(["a", "b"], [1.5, 2.5])
    assert refusal(raw[:-cut], header_len=n).status == Status.MALFORMED


def test_binary_data_left_over_is_malformed() -> None:
    raw, n = binary_body(["a"], [1.5], extra=b"\0")
    assert refusal(raw, header_len=n).status == Status.MALFORMED


def test_a_header_length_past_the_body_is_malformed() -> None:
    raw, _ = binary_body(["a"], [1.5])
    assert refusal(raw, header_len=len(raw) + 1).status == Status.MALFORMED


# -- replies -----------------------------------------------------------------------------------------
def test_a_single_reply_names_its_rung_and_stage_timings() -> None:
    reply = Reply(9, 0, [0.25], 1, "primary/7", [1], [2], [1, 2, 3, 4, 5, 6])
    out = msgspec.json.decode(TOY.encode_reply(reply, Call("r-1", False, (0,))))
    assert out["model_name"] == "toy" and out["model_version"] == "7" and out["id"] == "r-1"
    assert out["outputs"] == [{"name": "p", "shape": [1], "datatype": "FP64", "data": [0.25]}]
    params = out["parameters"]
    assert (params["rung"], params["flags"], params["status"], params["answered_by"]) == (
        "fast", 2, "ok", "primary/7")
    assert params["timings_ns"] == dict(zip(("queue", "ingest", "features", "inference", "delivery",
                                             "server_total"), [1, 2, 3, 4, 5, 6], strict=True))


def test_a_batch_reply_splits_row_major_outputs_per_output() -> None:
    model = OipModel(welcome(outputs=["p", "q"]), {}, "0")
    reply = Reply(9, 0, [1.0, 2.0, 3.0, 4.0], 2, "primary/7", [0, 3], [0, 1])
    out = msgspec.json.decode(model.encode_reply(reply, Call("", True, (1, 0))))
    assert [(o["name"], o["shape"], o["data"]) for o in out["outputs"]] == [
        ("q", [2], [2.0, 4.0]), ("p", [2], [1.0, 3.0])]
    assert out["parameters"]["rung"] == ["primary", "default"] and "id" not in out


def test_model_metadata_describes_inputs_and_outputs() -> None:
    model = OipModel(welcome(entities=["user", "item"]), {"user": "int64"}, "0")
    meta = msgspec.json.decode(model.metadata)
    assert meta["name"] == "toy" and meta["versions"] == ["7"] and meta["platform"] == "tailguard"
    assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [
        ("user", "INT64"), ("item", "BYTES"), ("price", "FP64"), ("size", "FP64")]
    assert meta["outputs"] == [{"name": "p", "datatype": "FP64", "shape": [-1]}]


def test_every_status_has_an_http_code() -> None:
    assert set(HTTP_STATUS) == set(Status)
    assert [HTTP_STATUS[s] for s in (Status.QUEUE_FULL, Status.EXPIRED, Status.DRAINING,
                                     Status.UNKNOWN_MODEL, Status.INTERNAL)] == [429, 504, 503, 404, 500]


@pytest.mark.parametrize(("wire", "oip"), [
    ("context.price", "inputs.price"), ("keys", "inputs"), ("priority", "parameters.priority"),
    ("budget_us", "parameters.timeout"), ("model", "model"),
])
def test_wire_fields_are_named_in_oip_terms(wire: str, oip: str) -> None:
    assert oip_field(wire) == oip


def test_the_error_body_has_message_code_and_field() -> None:
    assert msgspec.json.decode(error_body("queue_full", "full", "x")) == {
        "error": "full", "code": "queue_full", "field": "x"}
