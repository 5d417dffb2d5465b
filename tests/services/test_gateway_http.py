"""The gateway over real HTTP (`bentoml serve` in a subprocess): /predict, /models,
/metrics, every bad input, and the Open Inference Protocol through NVIDIA's tritonclient."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from flows.recipes.demo_models import vectors
from services.registry.stores import LocalStore
from services.registry.versions import ModelRegistry
from tests.conftest import INGEST, ServerProcess

GOOD = {"amount": 12.5, "merchant_category": "grocery", "hour": 3, "channel": "online"}
RISKY = {"amount": 4000.0, "merchant_category": "crypto", "hour": 2, "channel": "online"}


@pytest.fixture(scope="module")
def client(gateway: ServerProcess) -> httpx.Client:
    with httpx.Client(base_url=gateway.url, timeout=10, headers=INGEST) as c:
        yield c


def expect_error(resp: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in resp.text
    if field is not None:
        assert body.get("field") == field, body
    return body


def served_probs(body: dict[str, Any]) -> np.ndarray:
    return np.array(
        [[p["probabilities"]["legit"], p["probabilities"]["fraud"]] for p in body["predictions"]]
    )


def in_process(fraud_store: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    reg = ModelRegistry(LocalStore(fraud_store))
    sess = ort.InferenceSession(reg.load_artifact(reg.get("fraud")))
    return sess.run(None, {"features": x})[1]


def test_predict(client: httpx.Client, fraud_store: Path) -> None:
    resp = client.post(
        "/predict",
        json={
            "model": "fraud",
            "inputs": [GOOD, RISKY],
            "request_id": "r-1",
            "user_id": "new-user",
        },
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == "fraud" and body["version"] == "1" and body["request_id"] == "r-1"
    assert [p["label"] for p in body["predictions"]] == ["legit", "fraud"]
    # An unknown user: the user features take their defaults, and the answer says so.
    assert "user_stats" in body["predictions"][0]["features"]["missing"]
    # The served probabilities are the model's own on the assembled vector.
    x = vectors([{**GOOD, "user_id": "x"}, {**RISKY, "user_id": "x"}], {}, {}, unknown_share=1.0)
    np.testing.assert_allclose(served_probs(body), in_process(fraud_store, x), atol=1e-6)


def test_predict_with_materialized_features_and_cache(
    client: httpx.Client, fraud_store: Path, serving_redis_url: str
) -> None:
    import asyncio

    import redis.asyncio as aioredis

    from services.settings import FeatureSettings
    from services.state.features import FeatureRegistry, FeatureStore

    async def load() -> None:
        r = aioredis.Redis.from_url(serving_redis_url)
        store = FeatureStore(r, FeatureRegistry.from_settings(FeatureSettings()), FeatureSettings())
        now = time.time()
        await store.load_batch_view(
            "user_stats", {"u42": {"avg_amount_30d": 80.0, "txn_count_30d": 31}}, now
        )
        await store.load_batch_view("merchant_risk", {"crypto": {"risk_score": 0.2}}, now)
        await r.aclose()

    asyncio.run(load())
    payload = {"model": "fraud", "inputs": [{**RISKY, "user_id": "u42"}]}
    first = client.post("/predict", json=payload).json()
    pred = first["predictions"][0]
    assert "features" not in pred  # user and merchant found, fresh
    x = np.array([[4000.0, 7, 2, 1, 80.0, 31, 0.2]], dtype=np.float32)
    np.testing.assert_allclose(served_probs(first), in_process(fraud_store, x), atol=1e-6)
    assert pred["cached"] is False
    # The same input again, spelled differently: answered from the cache.
    again = client.post(
        "/predict", json={"inputs": [{**RISKY, "amount": 4000, "user_id": "u42"}], "model": "fraud"}
    ).json()
    assert again["predictions"][0]["cached"] is True
    assert again["predictions"][0]["probabilities"] == pred["probabilities"]


def test_events(client: httpx.Client) -> None:
    ok = client.post(
        "/events", json={"timestamp": time.time(), "entities": {"user": "u1"}, "amount": 12.5}
    )
    assert ok.status_code == 202 and ok.json()["accepted"] is True
    expect_error(
        client.post("/events", json={"entities": {"user": "u1"}, "amount": 1.0}), 422, "timestamp"
    )
    expect_error(
        client.post(
            "/events", json={"timestamp": time.time(), "entities": {"shop": "s"}, "amount": 1.0}
        ),
        422,
        "entities.shop",
    )
    expect_error(client.post("/events", content=b"nope"), 400, "body")


def test_predict_generates_request_id_and_pins_version(client: httpx.Client) -> None:
    body = client.post("/predict", json={"model": "fraud", "version": "1", "inputs": [GOOD]}).json()
    assert len(body["request_id"]) == 32


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        ({"model": "nope", "inputs": [GOOD]}, 404, None),
        ({"model": "fraud", "version": "99", "inputs": [GOOD]}, 404, None),
        (
            {"model": "fraud", "inputs": [{k: v for k, v in GOOD.items() if k != "hour"}]},
            422,
            "inputs[0].hour",
        ),
        ({"model": "fraud", "inputs": [{**GOOD, "extra": 1}]}, 422, "inputs[0].extra"),
        ({"model": "fraud", "inputs": [GOOD, {**GOOD, "amount": "12"}]}, 422, "inputs[1].amount"),
        ({"model": "fraud", "inputs": [{**GOOD, "hour": 99}]}, 422, "inputs[0].hour"),
        ({"model": "fraud", "inputs": [{**GOOD, "channel": "fax"}]}, 422, "inputs[0].channel"),
        ({"model": "fraud", "inputs": []}, 422, "inputs"),
        ({"model": "fraud", "inputs": "x"}, 422, "inputs"),
        ({"model": "fraud"}, 422, "inputs"),
        ({"inputs": [GOOD]}, 422, "model"),
        ({"model": 3, "inputs": [GOOD]}, 422, "model"),
        ({"model": "Bad Name!", "inputs": [GOOD]}, 422, "model"),
        ({"model": "fraud", "inputs": [GOOD], "colour": "red"}, 422, "colour"),
        ({"model": "fraud", "inputs": [GOOD], "user_id": 5}, 422, "user_id"),
        ({"model": "fraud", "inputs": [GOOD] * 65}, 413, "inputs"),
        ([1, 2], 422, "body"),
    ],
)
def test_bad_predict_inputs(
    client: httpx.Client, payload: Any, status: int, field: str | None
) -> None:
    expect_error(client.post("/predict", json=payload), status, field)


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b'{"model": "fraud", "inputs": [{"amount": NaN}]}',
        b'{"model":"fraud","inputs":[{"amount":1e999}]}',
        b"",
    ],
)
def test_malformed_json_is_400(client: httpx.Client, raw: bytes) -> None:
    expect_error(client.post("/predict", content=raw), 400, "body")


def test_body_over_limit_is_413(client: httpx.Client) -> None:
    body = expect_error(client.post("/predict", content=b"x" * 70_000), 413, "body")
    assert body["limit"] == 65536


def test_body_over_limit_without_content_length_is_413(client: httpx.Client) -> None:
    def chunks():  # chunked transfer: no Content-Length to check up front
        for _ in range(20):
            yield b"x" * 5000

    expect_error(client.post("/predict", content=chunks()), 413, "body")


def test_wrong_method_and_route(client: httpx.Client) -> None:
    expect_error(client.get("/predict"), 405)
    expect_error(client.get("/nope"), 404)
    expect_error(client.get("/v2/models/fraud/infer"), 405)


def test_models_lists_versions_and_schemas(client: httpx.Client) -> None:
    body = client.get("/models").json()
    (fraud,) = [m for m in body["models"] if m["name"] == "fraud"]
    assert fraud["served_version"] == "1"
    v = fraud["versions"][0]
    fields = {f["name"]: f["source"] for f in v["input_schema"]["fields"]}
    assert list(fields)[:4] == ["amount", "merchant_category", "hour", "channel"]
    assert fields["avg_amount_30d"] == "feature:user_stats.avg_amount_30d"
    assert v["runtime"]["loaded"] is True and v["runtime"]["resident_bytes"] > 0
    assert len(v["sha256"]) == 64


def test_metrics(client: httpx.Client) -> None:
    client.post("/predict", json={"model": "fraud", "inputs": [GOOD]})
    client.post("/predict", json={"model": "nope", "inputs": [GOOD]})
    text = client.get("/metrics").text
    assert (
        'servekit_request_latency_seconds_count{model="fraud",route="predict",version="1"}' in text
    )
    assert "servekit_batch_rows_bucket" in text
    assert "servekit_queue_rows" in text
    assert 'servekit_errors_total{error="ModelNotFoundError",route="/predict",status="404"}' in text


def test_v2_health_and_metadata(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    meta = client.get("/v2/models/fraud").json()
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 7]}]
    assert client.get("/v2/models/fraud/versions/1/ready").status_code == 200
    expect_error(client.get("/v2/models/nope"), 404)


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_infer(gateway: ServerProcess, binary: bool) -> None:
    import tritonclient.http as tc

    triton = tc.InferenceServerClient(url=gateway.url.removeprefix("http://"))
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("fraud")
    meta = triton.get_model_metadata("fraud")
    assert meta["inputs"][0]["name"] == "features"
    x = np.array([[12.5, 0, 3, 1, 0, 0, 0.03], [4000, 7, 2, 1, 0, 0, 0.03]], dtype=np.float32)
    inp = tc.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outs = [
        tc.InferRequestedOutput("probabilities", binary_data=binary),
        tc.InferRequestedOutput("label", binary_data=binary),
    ]
    result = triton.infer("fraud", [inp], outputs=outs, request_id="t-1")
    probs = result.as_numpy("probabilities")
    assert probs.shape == (2, 2) and probs.dtype == np.float32
    assert result.as_numpy("label").tolist() == [0, 1]
    assert result.get_response()["id"] == "t-1"


def test_tritonclient_errors_are_readable(gateway: ServerProcess) -> None:
    import tritonclient.http as tc
    from tritonclient.utils import InferenceServerException

    triton = tc.InferenceServerClient(url=gateway.url.removeprefix("http://"))
    inp = tc.InferInput("features", [1, 3], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"shape \[1, 3\]"):
        triton.infer("fraud", [inp])
    with pytest.raises(InferenceServerException, match="unknown model"):
        triton.get_model_metadata("nope")


def test_v2_binary_nan_is_422(client: httpx.Client) -> None:
    import orjson

    raw = np.full((1, 7), np.nan, dtype="<f4").tobytes()
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "datatype": "FP32",
                    "shape": [1, 7],
                    "parameters": {"binary_data_size": 28},
                }
            ]
        }
    )
    resp = client.post(
        "/v2/models/fraud/infer",
        content=head + raw,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    expect_error(resp, 422, "inputs[0].data")


def test_gpu_route_says_why_there_are_no_gpu_series(client: httpx.Client) -> None:
    """Without NVML or a GPU the gateway exports no GPU series and ``GET /gpu`` says why."""
    import shutil

    body = client.get("/gpu").json()
    metrics = client.get("/metrics").text
    if shutil.which("nvidia-smi") is None:
        assert body["available"] is False
        assert body["reason"]
        assert "servekit_gpu_utilization_percent" not in metrics
    else:  # pragma: no cover - a machine with a GPU
        assert body["available"] is True
        assert "servekit_gpu_utilization_percent" in metrics
