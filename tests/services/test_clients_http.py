"""The clients users already have, against a live gateway (`bentoml serve`): BentoML's
HTTP clients, NVIDIA's tritonclient (JSON and binary), KServe's v2 REST client, and the
OpenAPI document with its docs page."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
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
# Installed apart by `make test` (requirements/kserve-client.txt), run in its own interpreter.
KSERVE_CLIENT = Path(sys.prefix) / "kserve-client"


@pytest.fixture(scope="module")
def kserve_seen(gateway: ServerProcess) -> dict[str, Any]:
    """What KServe's REST client answered and raised against the gateway (kserve_probe.py)."""
    if not (KSERVE_CLIENT / "kserve" / "__init__.py").is_file():
        pytest.fail(
            f"KServe's client is not installed in {KSERVE_CLIENT}: run `make test` (its "
            f"set-up target `make {Path(sys.prefix).name}/.dev` installs it from "
            "requirements/kserve-client.txt)",
            pytrace=False,
        )
    probe = Path(__file__).with_name("kserve_probe.py")
    env = {**os.environ, "PYTHONPATH": str(KSERVE_CLIENT)}
    done = subprocess.run(
        [sys.executable, str(probe), gateway.url], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, f"kserve_probe.py failed:\n{done.stderr[-3000:]}"
    seen: dict[str, Any] = json.loads(done.stdout)
    return seen


def test_kserve_client_is_the_pinned_one_installed_apart(kserve_seen: dict[str, Any]) -> None:
    assert kserve_seen["kserve"]["version"] == "0.21.0"
    assert Path(kserve_seen["kserve"]["file"]).is_relative_to(KSERVE_CLIENT)
    assert "kserve" not in sys.modules  # the test process never imported it


def test_kserve_readiness_and_metadata(kserve_seen: dict[str, Any]) -> None:
    assert kserve_seen["live"] is True and kserve_seen["ready"] is True
    assert kserve_seen["fraud_ready"] is True and kserve_seen["nope_ready"] is False
    assert kserve_seen["server"]["name"] == "servekit"
    assert kserve_seen["server"]["extensions"] == ["binary_tensor_data"]
    model = kserve_seen["model"]
    assert model["name"] == "fraud" and model["versions"]
    assert model["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 7]}]
    assert {o["name"]: o["datatype"] for o in model["outputs"]}["probabilities"] == "FP32"


@pytest.mark.parametrize("encoding", ["json", "binary"])
def test_kserve_infer(kserve_seen: dict[str, Any], encoding: str) -> None:
    got = kserve_seen["infer"][encoding]
    # (kserve 0.21 drops the response's model_version when it parses a REST answer)
    assert got["id"] == "k-1" and got["model_name"] == "fraud"
    assert got["outputs"] == [o["name"] for o in kserve_seen["model"]["outputs"]]
    assert got["datatype"] == "FP32" and got["shape"] == [2, 2]
    probs = np.array(got["probabilities"])
    assert probs.argmax(axis=1).tolist() == [1, 0]
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("wrong_shape", 422, r"has shape \[1, 4\]; the model takes \[-1, 7\]"),
        ("wrong_datatype", 422, r"must have datatype FP32, got 'INT64'"),
        ("unknown_model", 404, r"unknown model"),
    ],
)
def test_kserve_errors_carry_the_gateway_message(
    kserve_seen: dict[str, Any], case: str, status: int, message: str
) -> None:
    """The REST client raises its documented httpx.HTTPStatusError, its message built from
    the gateway's ``error`` field (kserve reads it only from an application/json body)."""
    error = kserve_seen["errors"][case]
    assert error is not None, f"{case}: kserve's client raised nothing"
    assert error["type"] == "httpx.HTTPStatusError" and error["status"] == status
    gateway_part = error["message"].split(f", '{status} ")[0]
    assert re.search(message, gateway_part), error["message"]


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
