"""Hypothesis on the JSON body parser and the OIP decoder (JSON and binary tensors).

Whatever the bytes, decoding either succeeds or raises a ``ServekitError`` that answers
4xx: never another exception (a 500) and never a 5xx.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.edge.http import error_response, parse_json
from services.edge.oip import decode_request
from services.errors import ServekitError
from services.registry.schema import OIP_TO_NUMPY, TensorSpec

SPECS = [
    TensorSpec(name="features", datatype="FP32", shape=[-1, 4]),
    TensorSpec(name="ids", datatype="INT64", shape=[-1]),
    TensorSpec(name="text", datatype="BYTES", shape=[-1]),
]
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=10), inner, max_size=6),
    max_leaves=30,
)  # fmt: skip
names = st.sampled_from(["features", "ids", "text", "other", ""]) | st.text(max_size=8)
datatypes = st.sampled_from([*OIP_TO_NUMPY, "FP8", "", "fp32"]) | st.text(max_size=6)
shapes = st.lists(st.integers(min_value=-3, max_value=2**40), max_size=4) | json_values


def is_client_error(exc: ServekitError) -> bool:
    resp = error_response(exc)
    return 400 <= resp.status < 500 and b"Traceback" not in resp.body


def decodes_cleanly(body: bytes, header_length: str | None) -> None:
    try:
        decode_request(body, header_length, SPECS, max_rows=64)
    except ServekitError as exc:
        assert is_client_error(exc), exc


@FAST
@given(st.binary(max_size=200))
def test_parse_json_takes_any_bytes(raw: bytes) -> None:
    try:
        parse_json(raw)
    except ServekitError as exc:
        assert is_client_error(exc)


@FAST
@given(json_values)
def test_parse_json_takes_any_json(doc: Any) -> None:
    # The standard library writes what orjson reads differently or refuses (integers past
    # 64 bits become floats, Infinity is refused): parsed or a 400, nothing else.
    raw = json.dumps(doc).encode()
    try:
        parse_json(raw)
    except ServekitError as exc:
        assert is_client_error(exc)


@FAST
@given(st.binary(max_size=300), st.none() | st.text(max_size=6))
def test_oip_decoder_takes_any_bytes(body: bytes, header_length: str | None) -> None:
    decodes_cleanly(body, header_length)


tensor = st.fixed_dictionaries(
    {"name": names, "datatype": datatypes, "shape": shapes},
    optional={"data": json_values, "parameters": json_values | st.fixed_dictionaries(
        {"binary_data_size": st.integers(min_value=-5, max_value=2**40) | json_values})},
)  # fmt: skip


@FAST
@given(
    st.lists(tensor, max_size=4) | json_values,
    json_values,
    json_values,
    st.binary(max_size=200),
    st.integers(min_value=-3, max_value=3),
)
def test_oip_decoder_takes_any_header_and_binary_tail(
    inputs: Any, outputs: Any, parameters: Any, tail: bytes, skew: int
) -> None:
    header = json.dumps({"inputs": inputs, "outputs": outputs, "parameters": parameters}).encode()
    decodes_cleanly(header + tail, str(len(header) + skew) if tail else None)


@FAST
@given(
    st.sampled_from(["FP32", "INT64", "BYTES", "FP16", "BOOL"]),
    st.lists(st.integers(min_value=-2, max_value=70), min_size=1, max_size=3),
    st.binary(max_size=300),
)
def test_oip_binary_tensors_of_any_size(datatype: str, shape: list[int], raw: bytes) -> None:
    name = {"FP32": "features", "INT64": "ids", "BYTES": "text"}.get(datatype, "features")
    t = {"name": name, "datatype": datatype, "shape": shape,
         "parameters": {"binary_data_size": len(raw)}}  # fmt: skip
    header = orjson.dumps({"inputs": [t]})
    decodes_cleanly(header + raw, str(len(header)))
