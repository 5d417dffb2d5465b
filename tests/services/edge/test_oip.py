"""Open Inference Protocol codec: JSON and binary tensors, and its errors."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from services.edge.oip import decode_request, encode_response
from services.errors import BadRequestError, InvalidInputError, PayloadTooLargeError
from services.registry.schema import TensorSpec

SPECS = [TensorSpec(name="features", datatype="FP32", shape=[-1, 4])]


def body(**tensor: object) -> bytes:
    t = {"name": "features", "datatype": "FP32", "shape": [2, 4], "data": list(range(8)), **tensor}
    return orjson.dumps({"inputs": [t]})


def test_json_tensor() -> None:
    req = decode_request(body(), None, SPECS, max_rows=10)
    assert req.rows == 2
    assert req.feeds["features"].dtype == np.float32
    assert req.feeds["features"].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_nested_json_data_is_accepted() -> None:
    req = decode_request(body(data=[[0, 1, 2, 3], [4, 5, 6, 7]]), None, SPECS, max_rows=10)
    assert req.feeds["features"].shape == (2, 4)


def test_binary_tensor() -> None:
    raw = np.arange(8, dtype="<f4").tobytes()
    head = orjson.dumps(
        {"inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 4], "parameters": {"binary_data_size": len(raw)}}],
         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}
    )  # fmt: skip
    req = decode_request(head + raw, str(len(head)), SPECS, max_rows=10)
    assert req.feeds["features"][1, 3] == 7.0
    assert req.wants_binary("probabilities")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "x"}, "inputs[0].name"),
        ({"datatype": "INT64"}, "inputs[0].datatype"),
        ({"shape": [2, 3]}, "inputs[0].shape"),
        ({"shape": [8]}, "inputs[0].shape"),
        ({"shape": [2, -4]}, "inputs[0].shape"),
        ({"data": list(range(7))}, "inputs[0].data"),
        ({"data": ["a"] * 8}, "inputs[0].data"),
        ({"data": "nope"}, "inputs[0].data"),
    ],
)
def test_bad_tensors_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        decode_request(body(**kwargs), None, SPECS, max_rows=10)
    assert err.value.field == field


def test_nan_in_binary_is_refused() -> None:
    raw = np.array([np.nan] * 4, dtype="<f4").tobytes()
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "datatype": "FP32",
                    "shape": [1, 4],
                    "parameters": {"binary_data_size": 16},
                }
            ]
        }
    )
    with pytest.raises(InvalidInputError, match="NaN"):
        decode_request(head + raw, str(len(head)), SPECS, max_rows=10)


def test_binary_size_mismatch_and_bad_header() -> None:
    raw = np.zeros(3, dtype="<f4").tobytes()
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "datatype": "FP32",
                    "shape": [1, 4],
                    "parameters": {"binary_data_size": 12},
                }
            ]
        }
    )
    with pytest.raises(InvalidInputError, match="do not hold"):
        decode_request(head + raw, str(len(head)), SPECS, max_rows=10)
    with pytest.raises(BadRequestError):
        decode_request(head + raw, "abc", SPECS, max_rows=10)
    with pytest.raises(BadRequestError):
        decode_request(head + raw, "100000", SPECS, max_rows=10)


def test_missing_input_empty_batch_and_too_many_rows() -> None:
    with pytest.raises(InvalidInputError, match="non-empty"):
        decode_request(orjson.dumps({"inputs": []}), None, SPECS, max_rows=10)
    with pytest.raises(InvalidInputError, match="empty"):
        decode_request(body(shape=[0, 4], data=[]), None, SPECS, max_rows=10)
    with pytest.raises(PayloadTooLargeError):
        decode_request(body(), None, SPECS, max_rows=1)
    two = [
        TensorSpec(name="features", datatype="FP32", shape=[-1, 4]),
        TensorSpec(name="mask", datatype="INT64", shape=[-1]),
    ]
    with pytest.raises(InvalidInputError, match="missing input tensor 'mask'"):
        decode_request(body(), None, two, max_rows=10)


def test_malformed_json() -> None:
    with pytest.raises(BadRequestError, match="malformed JSON"):
        decode_request(b"{not json", None, SPECS, max_rows=10)


def test_encode_json_and_binary_outputs_and_bytes() -> None:
    req = decode_request(body(), None, SPECS, max_rows=10)
    out = {
        "label": np.array([0, 1], dtype=np.int64),
        "probabilities": np.array([[0.9, 0.1], [0.3, 0.7]], dtype=np.float32),
    }
    data, headers = encode_response("fraud", "1", req, out)
    doc = orjson.loads(data)
    assert headers["content-type"] == "application/json"
    assert doc["outputs"][0] == {"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 1]}
    req.binary_default = True
    data, headers = encode_response(
        "fraud", "1", req, {"names": np.array([b"ab", b"c"], dtype=object)}
    )
    n = int(headers["Inference-Header-Content-Length"])
    assert data[n:] == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"
