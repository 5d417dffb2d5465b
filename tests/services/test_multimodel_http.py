"""The multi-model bundle over real HTTP: models load on first use, the budget holds
through evictions, and a corrupt model fails only its own requests with a 503."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.registry.stores import LocalStore
from services.registry.versions import ModelRegistry
from tests.conftest import ROOT, ServerProcess
from tests.fixtures.onnx_models import expected, register_mlp

pytestmark = pytest.mark.slow

SIZES = {f"tail-{i}": 1024 * (i + 1) for i in range(6)}  # hidden units
D_IN = 16
BUDGET = 3_000_000


@pytest.fixture(scope="module")
def tail_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tail_store")
    registry = ModelRegistry(LocalStore(root))
    for i, (name, hidden) in enumerate(SIZES.items()):
        register_mlp(registry, name, D_IN, hidden, seed=i)
    bad = register_mlp(registry, "broken", D_IN, 64, seed=99)
    registry.store.put(f"broken/{bad.version}/model.onnx", b"not an onnx model")
    return root


@pytest.fixture(scope="module")
def tail_gateway(tail_store: Path, serving_redis_url: str) -> Iterator[ServerProcess]:
    server = ServerProcess(
        {
            "SERVEKIT_MODELS": "[]",
            "SERVEKIT_MODEL_STORE": str(tail_store),
            "SERVEKIT_REDIS_URL": serving_redis_url,
            "SERVEKIT_MULTIMODEL_MEMORY_BUDGET_BYTES": str(BUDGET),
        }
    )
    yield server
    server.stop()


def infer(url: str, model: str, x: np.ndarray) -> httpx.Response:
    body = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
        ]
    }
    return httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=30)


def test_any_model_loads_on_first_use_within_budget(tail_gateway: ServerProcess) -> None:
    x = np.random.default_rng(0).standard_normal((3, D_IN)).astype(np.float32)
    for _ in range(2):  # two passes: later models evict earlier ones, which reload
        for i, (name, hidden) in enumerate(SIZES.items()):
            resp = infer(tail_gateway.url, name, x)
            assert resp.status_code == 200, resp.text
            y = np.array(resp.json()["outputs"][0]["data"], dtype=np.float32).reshape(3, 2)
            np.testing.assert_allclose(y, expected(D_IN, hidden, x, seed=i), rtol=1e-4, atol=1e-3)
            models = httpx.get(f"{tail_gateway.url}/models").json()["models"]
            resident = sum(
                v["runtime"].get("resident_bytes", 0)
                for m in models
                for v in m["versions"]
                if v["runtime"].get("loaded")
            )
            assert 0 < resident <= BUDGET
    metrics = httpx.get(f"{tail_gateway.url}/metrics").text
    evictions = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("servekit_model_evictions_total{")
    )
    assert evictions > 0


def test_corrupt_model_fails_alone(tail_gateway: ServerProcess) -> None:
    x = np.zeros((1, D_IN), dtype=np.float32)
    bad = infer(tail_gateway.url, "broken", x)
    assert bad.status_code == 503
    assert "broken" in bad.json()["error"] and bad.headers.get("retry-after")
    assert infer(tail_gateway.url, "tail-0", x).status_code == 200


def test_multimodel_bundle_builds(fraud_store: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", "bentos/multimodel/bentofile.yaml", "--output", "tag", "."],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    import bentoml

    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    bento = bentoml.get(tag)
    envs = {e["name"]: e["value"] for e in json.loads(json.dumps(bento.info.to_dict()["envs"]))}
    assert envs["SERVEKIT_MODELS"] == "[]"
    bentoml.delete(tag)


def metric(text: str, name: str) -> float:
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    ]
    assert values, f"{name} not in /metrics"
    return sum(values)


def test_a_warm_tail_model_runs_inline_under_the_watchdog(tail_gateway: ServerProcess) -> None:
    x = np.ones((1, D_IN), dtype=np.float32)
    before = metric(httpx.get(f"{tail_gateway.url}/metrics").text, "servekit_inline_batches")
    for _ in range(30):  # the first calls run on a worker thread and time the model
        assert infer(tail_gateway.url, "tail-0", x).status_code == 200
    text = httpx.get(f"{tail_gateway.url}/metrics").text
    assert metric(text, "servekit_inline_batches") - before >= 10
    assert metric(text, "servekit_inline_stops") == 0
