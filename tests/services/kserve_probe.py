"""KServe's v2 REST client against a live gateway, in an interpreter of its own.

kserve is installed apart from servekit's environment (requirements/kserve-client.txt: every
kserve release pins psutil < 6 and pandas < 3). tests/services/test_clients_http.py runs
this file with that directory on PYTHONPATH, so the test process never imports kserve, and
asserts on the one JSON object it prints: what the client answered and the errors it
raised. Usage: python tests/services/kserve_probe.py GATEWAY_URL [MODEL]; with a MODEL
(a text model), the token tensors to send are read as JSON from standard input.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable
from importlib.metadata import version
from typing import Any

import httpx
import kserve
import numpy as np
from kserve.protocol.rest.v2_datamodels import ModelMetadataResponse, ServerMetadataResponse

# The fraud model's v2 input (as in test_clients_http.py): a risky and an ordinary record.
FEATURES = np.array([[4000, 7, 2, 1, 0, 0, 0.03], [12.5, 0, 3, 1, 0, 0, 0.03]], np.float32)


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool) -> kserve.InferInput:
    x = kserve.InferInput(name, list(array.shape), datatype)
    x.set_data_from_numpy(array, binary_data=binary)
    return x


async def raised(call: Awaitable[Any]) -> dict[str, Any] | None:
    """The error ``call`` raised (the REST client's documented HTTPStatusError), or None."""
    try:
        await call
    except httpx.HTTPStatusError as exc:
        kind = type(exc)
        return {
            "type": f"{kind.__module__}.{kind.__qualname__}",
            "status": exc.response.status_code,
            "message": str(exc),
        }
    return None


async def answers(client: kserve.InferenceRESTClient, base: str) -> dict[str, Any]:
    """Readiness, metadata (validated by kserve's own v2 data models) and inference."""
    seen: dict[str, Any] = {
        "live": await client.is_server_live(base),
        "ready": await client.is_server_ready(base),
        "fraud_ready": await client.is_model_ready(base, "fraud"),
        "nope_ready": await client.is_model_ready(base, "nope"),
        # kserve's REST client has no metadata calls: its v2 data models read the documents.
        "server": ServerMetadataResponse.model_validate_json(
            httpx.get(f"{base}/v2").content
        ).model_dump(),
        "model": ModelMetadataResponse.model_validate_json(
            httpx.get(f"{base}/v2/models/fraud").content
        ).model_dump(),
        "infer": {},
    }
    for binary in (False, True):
        x = tensor("features", FEATURES, "FP32", binary)
        request = kserve.InferRequest(model_name="fraud", infer_inputs=[x], request_id="k-1")
        result = await client.infer(base, request, model_name="fraud")
        out = result.get_output_by_name("probabilities")
        seen["infer"]["binary" if binary else "json"] = {
            "id": result.id,
            "model_name": result.model_name,
            "outputs": [o.name for o in result.outputs],
            "datatype": out.datatype,
            "shape": list(out.shape),
            "probabilities": out.as_numpy().tolist(),
        }
    return seen


async def errors(client: kserve.InferenceRESTClient, base: str) -> dict[str, Any]:
    """What the client raises for a wrong shape, a wrong datatype and an unknown model."""
    short = tensor("features", np.zeros((1, 4), np.float32), "FP32", False)
    ints = tensor("features", FEATURES.astype(np.int64), "INT64", True)
    fraud = FEATURES[:1]
    return {
        "wrong_shape": await raised(
            client.infer(base, kserve.InferRequest("fraud", [short]), model_name="fraud")
        ),
        "wrong_datatype": await raised(
            client.infer(base, kserve.InferRequest("fraud", [ints]), model_name="fraud")
        ),
        "unknown_model": await raised(
            client.infer(
                base,
                kserve.InferRequest("nope", [tensor("features", fraud, "FP32", False)]),
                model_name="nope",
            )
        ),
    }


async def main(base: str) -> dict[str, Any]:
    client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2"))
    try:
        return {
            "kserve": {"version": version("kserve"), "file": kserve.__file__},
            **await answers(client, base),
            "errors": await errors(client, base),
        }
    finally:
        await client.close()


async def text_model(base: str, model: str, feeds: dict[str, list[list[int]]]) -> dict[str, Any]:
    """Readiness, metadata and inference (JSON and binary) of a text model given its token
    tensors, and the error for token ids sent as FP32."""
    client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2"))
    try:
        arrays = {name: np.array(rows, np.int64) for name, rows in feeds.items()}
        seen: dict[str, Any] = {
            "ready": await client.is_model_ready(base, model),
            "model": ModelMetadataResponse.model_validate_json(
                httpx.get(f"{base}/v2/models/{model}").content
            ).model_dump(),
            "infer": {},
        }
        for binary in (False, True):
            inputs = [tensor(n, a, "INT64", binary) for n, a in arrays.items()]
            result = await client.infer(base, kserve.InferRequest(model, inputs), model_name=model)
            out = result.get_output_by_name("embedding")
            seen["infer"]["binary" if binary else "json"] = out.as_numpy().tolist()
        floats = [tensor(n, a.astype(np.float32), "FP32", False) for n, a in arrays.items()]
        seen["wrong_datatype"] = await raised(
            client.infer(base, kserve.InferRequest(model, floats), model_name=model)
        )
        return seen
    finally:
        await client.close()


if __name__ == "__main__":
    if len(sys.argv) > 2:
        seen = asyncio.run(text_model(sys.argv[1], sys.argv[2], json.load(sys.stdin)))
    else:
        seen = asyncio.run(main(sys.argv[1]))
    print(json.dumps(seen))
