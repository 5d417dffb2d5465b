"""The clients users already have, against a live gateway (`bentoml serve`): BentoML's
HTTP clients, NVIDIA's tritonclient (JSON and binary), KServe's v2 REST client, and the
OpenAPI document with its docs page."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import INGEST_TOKEN, ServerProcess

RISKY = {"amount": 4000, "merchant_category": "crypto", "hour": 2, "channel": "online"}
# The fraud model's v2 input: amount, merchant_category (index), hour, channel (index),
# then the three feature-store values (a new user's defaults).
FEATURES = np.array([[4000, 7, 2, 1, 0, 0, 0.03], [12.5, 0, 3, 1, 0, 0, 0.03]], np.float32)


def same_answer(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two /predict answers agree (the cache flag aside: the second one may be a hit)."""
    assert {k: v for k, v in a.items() if k != "predictions"} == {
        k: v for k, v in b.items() if k != "predictions"
    }
    strip = [{k: v for k, v in p.items() if k != "cached"} for p in a["predictions"]]
    assert strip == [{k: v for k, v in p.items() if k != "cached"} for p in b["predictions"]]


# -- BentoML's HTTP clients ------------------------------------------------------------
def test_bentoml_sync_client_predicts_like_a_raw_post(gateway: ServerProcess) -> None:
    import bentoml

    record = {**RISKY, "amount": 4000 + uuid.uuid4().int % 1000}
    with bentoml.SyncHTTPClient(gateway.url) as client:
        assert {"predict", "events", "feedback"} <= set(client.endpoints)
        got = client.predict(model="fraud", inputs=[record], user_id="u42", request_id="b-1")
    raw = httpx.post(
        f"{gateway.url}/predict",
        json={"model": "fraud", "inputs": [record], "user_id": "u42", "request_id": "b-1"},
    ).json()
    same_answer(got, raw)
    assert got["predictions"][0]["label"] in ("legit", "fraud")


def test_bentoml_client_errors_are_its_own_exceptions(gateway: ServerProcess) -> None:
    import bentoml
    from bentoml.exceptions import NotFound, UnprocessableEntity

    with bentoml.SyncHTTPClient(gateway.url) as client:
        with pytest.raises(UnprocessableEntity, match=r"inputs\[0\]\.amount") as info:
            client.predict(model="fraud", inputs=[{**RISKY, "amount": -1}])
        assert info.value.error_code == 422
        # An unknown record field still reaches the gateway: the client does not drop it.
        with pytest.raises(UnprocessableEntity, match=r"inputs\[0\]\.colour"):
            client.predict(model="fraud", inputs=[{**RISKY, "colour": "red"}])
        with pytest.raises(NotFound, match="unknown model"):
            client.predict(model="nope", inputs=[RISKY])


async def test_bentoml_async_client(gateway: ServerProcess) -> None:
    import bentoml

    record = {**RISKY, "hour": uuid.uuid4().int % 24}
    async with bentoml.AsyncHTTPClient(gateway.url, token=INGEST_TOKEN) as client:
        got = await client.predict(model="fraud", inputs=[record], request_id="a-1")
        event = await client.events(timestamp=1.7e9, entities={"user": "u-async"}, amount=3.5)
    raw = httpx.post(
        f"{gateway.url}/predict",
        json={"model": "fraud", "inputs": [record], "request_id": "a-1"},
    ).json()
    same_answer(got, raw)
    assert event["accepted"] is True


# -- NVIDIA's tritonclient ---------------------------------------------------------------
@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_readiness_metadata_and_infer(gateway: ServerProcess, binary: bool) -> None:
    import tritonclient.http as tc

    triton = tc.InferenceServerClient(gateway.url.removeprefix("http://"))
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("fraud") and not triton.is_model_ready("nope")
    meta = triton.get_model_metadata("fraud")
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 7]}]
    x = tc.InferInput("features", list(FEATURES.shape), "FP32")
    x.set_data_from_numpy(FEATURES, binary_data=binary)
    out = tc.InferRequestedOutput("probabilities", binary_data=binary)
    probs = triton.infer("fraud", [x], outputs=[out]).as_numpy("probabilities")
    assert probs.shape == (2, 2) and probs.argmax(axis=1).tolist() == [1, 0]


def test_tritonclient_wrong_shape_is_its_exception_with_the_422_message(
    gateway: ServerProcess,
) -> None:
    import tritonclient.http as tc
    from tritonclient.utils import InferenceServerException

    triton = tc.InferenceServerClient(gateway.url.removeprefix("http://"))
    x = tc.InferInput("features", [1, 4], "FP32")
    x.set_data_from_numpy(np.array([[4000, 7, 2, 1]], np.float32), binary_data=True)
    with pytest.raises(InferenceServerException) as info:
        triton.infer("fraud", [x])
    assert info.value.status() == "422"
    assert "shape [1, 4]; the model takes [-1, 7]" in info.value.message()


# -- KServe's v2 REST client -------------------------------------------------------------
async def test_kserve_rest_client(gateway: ServerProcess) -> None:
    """kserve pins psutil<6 and pandas<3, which servekit cannot install beside itself; the
    client itself runs with servekit's versions, so this runs wherever kserve imports."""
    kserve = pytest.importorskip("kserve", reason="kserve is not installable beside servekit")
    client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2"))
    base = gateway.url
    try:
        assert await client.is_server_live(base) and await client.is_server_ready(base)
        assert await client.is_model_ready(base, "fraud")
        assert not await client.is_model_ready(base, "nope")
        for binary in (False, True):
            x = kserve.InferInput("features", list(FEATURES.shape), "FP32")
            x.set_data_from_numpy(FEATURES, binary_data=binary)
            request = kserve.InferRequest(model_name="fraud", infer_inputs=[x], request_id="k-1")
            result = await client.infer(base, request, model_name="fraud")
            probs = result.get_output_by_name("probabilities").as_numpy()
            assert probs.shape == (2, 2) and probs.argmax(axis=1).tolist() == [1, 0]
            assert result.id == "k-1"
        bad = kserve.InferInput("features", [1, 4], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 4), np.float32), binary_data=False)
        with pytest.raises(httpx.HTTPStatusError, match=r"the model takes \[-1, 7\]") as info:
            await client.infer(base, kserve.InferRequest("fraud", [bad]), model_name="fraud")
        assert info.value.response.status_code == 422
    finally:
        await client.close()


# -- the OpenAPI document and its docs page ------------------------------------------------
def test_docs_json_documents_every_route(gateway: ServerProcess) -> None:
    doc = httpx.get(f"{gateway.url}/docs.json").json()
    assert doc["openapi"] == "3.1.0"
    assert {
        "/predict", "/models", "/events", "/feedback", "/metrics", "/gpu", "/docs",
        "/docs.json", "/admin/rollouts", "/admin/rollout", "/v2", "/v2/health/live",
        "/v2/health/ready", "/v2/models/{model_name}", "/v2/models/{model_name}/infer",
        "/v2/models/{model_name}/versions/{model_version}/ready",
    } <= set(doc["paths"])  # fmt: skip
    fraud = doc["components"]["schemas"]["Record.fraud"]["properties"]
    assert fraud["merchant_category"]["enum"][-1] == "crypto"
    predict = doc["components"]["schemas"]["Predict.fraud"]["properties"]
    assert predict["inputs"]["maxItems"] == 64  # the fixture's SERVEKIT_MAX_RECORDS
    pytest.importorskip("openapi_spec_validator").validate(doc)


def test_docs_page_is_self_contained(gateway: ServerProcess) -> None:
    page = httpx.get(f"{gateway.url}/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "https://" not in page.text and "SwaggerUIBundle" in page.text
    bundle = httpx.get(f"{gateway.url}/docs/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.content) > 100_000
