"""Hypothesis over real HTTP: hostile bodies, headers and versions never get a 5xx.

Bodies are JSON built from the fraud model's own fields (so many reach record validation)
or raw bytes; OIP requests carry a JSON header and a binary tail with any header length.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import INGEST, ServerProcess

GOOD = {"amount": 12.5, "merchant_category": "grocery", "hour": 3, "channel": "online"}
HTTP = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["fraud", "1", "grocery", "online", "../1", "\x00"])
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
records = st.dictionaries(st.sampled_from([*GOOD, "user_id", "x"]), values, max_size=6)
predict_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["fraud", "nope"]) | values, "inputs": st.lists(records, max_size=4) | values},
    optional={"version": values, "user_id": values, "request_id": values, "extra": values},
)  # fmt: skip


@pytest.fixture(scope="module")
def client(gateway: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=10, headers=INGEST) as c:
        yield c


def assert_clean(resp: httpx.Response) -> None:
    assert resp.status_code < 500 or resp.status_code == 503, (resp.status_code, resp.text)
    assert "Traceback" not in resp.text and 'File "' not in resp.text


def dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode()  # writes NaN, Infinity and huge integers too


@HTTP
@given(predict_bodies)
def test_predict_takes_any_body(client: httpx.Client, body: dict[str, Any]) -> None:
    assert_clean(client.post("/predict", content=dumps(body)))


@HTTP
@given(st.binary(max_size=300) | values.map(dumps))
def test_every_json_route_takes_any_bytes(client: httpx.Client, raw: bytes) -> None:
    for path in ("/predict", "/events", "/feedback", "/v2/models/fraud/infer"):
        assert_clean(client.post(path, content=raw))


@HTTP
@given(
    values,
    st.sampled_from(["FP32", "INT64", "BYTES", "FP16", "BOOL", "x"]),
    st.lists(st.integers(min_value=-2, max_value=99), max_size=3) | values,
    st.binary(max_size=200),
    st.integers(min_value=-4, max_value=4),
)
def test_oip_binary_infer_takes_any_tensor(
    client: httpx.Client, params: Any, datatype: str, shape: Any, tail: bytes, skew: int
) -> None:
    tensor = {"name": "features", "datatype": datatype, "shape": shape,
              "parameters": {"binary_data_size": len(tail)}}  # fmt: skip
    header = dumps({"inputs": [tensor], "parameters": params})
    resp = client.post(
        "/v2/models/fraud/infer",
        content=header + tail,
        headers={"Inference-Header-Content-Length": str(len(header) + skew)},
    )
    assert_clean(resp)


@HTTP
@given(st.text(min_size=1, max_size=80))
def test_any_version_in_a_path_or_body(client: httpx.Client, version: str) -> None:
    assert_clean(client.get(f"/v2/models/fraud/versions/{quote(version, safe='')}"))
    assert_clean(client.post("/predict", json={"model": "fraud", "version": version,
                                               "inputs": [GOOD]}))  # fmt: skip


def test_the_gateway_is_healthy_after_the_fuzzing(client: httpx.Client) -> None:
    assert client.get("/v2/health/ready").status_code == 200
    assert client.post("/predict", json={"model": "fraud", "inputs": [GOOD]}).status_code == 200
