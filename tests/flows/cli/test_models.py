"""``servekit models``: list, register an ONNX file against a schema, retrain the demo."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
import redis.asyncio as aioredis
from onnx import TensorProto, helper
from typer.testing import CliRunner

from flows.cli import app
from services.registry.stores import LocalStore
from services.registry.versions import ModelRegistry
from services.rollout.state import RolloutStore
from services.settings import get_settings

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


def invoke(*args: str):
    return runner.invoke(app, list(args), env=WIDE)


@pytest.fixture
def store(
    fraud_store: Path, tmp_path: Path, redis_url: str, redis_client, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    root = tmp_path / "store"
    shutil.copytree(fraud_store, root)
    monkeypatch.setenv("SERVEKIT_MODEL_STORE", str(root))
    monkeypatch.setenv("SERVEKIT_REDIS_URL", redis_url)
    get_settings.cache_clear()
    yield root
    get_settings.cache_clear()


def _graph(tmp_path: Path, width: int) -> Path:
    """An ONNX graph taking features [N, width] and giving probabilities."""
    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, width])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, width])
    label = helper.make_tensor_value_info("label", TensorProto.FLOAT, [None, width])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["features"], ["probabilities"]),
         helper.make_node("Identity", ["features"], ["label"])],
        "g", [x], [y, label],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / f"w{width}.onnx"
    onnx.save(model, path)
    return path


def test_list_register_and_refusals(store: Path, tmp_path: Path) -> None:
    result = invoke("models", "list")
    assert result.exit_code == 0, result.output
    assert "fraud" in result.output and "production" in result.output and "yes" in result.output

    v1 = store / "fraud" / "1" / "model.onnx"
    result = invoke("models", "register", "fraud", "--file", str(v1))
    assert result.exit_code == 0, result.output
    assert "registered fraud version 2 (staging, schema of version 1" in result.output
    assert "-p candidate=2" in result.output
    mv = ModelRegistry(LocalStore(store)).get("fraud", "2")
    assert (
        mv.stage == "staging"
        and mv.model_schema == ModelRegistry(LocalStore(store)).get("fraud", "1").model_schema
    )
    listed = invoke("models", "list").output
    assert "staging" in listed

    wrong = invoke("models", "register", "fraud", "--file", str(_graph(tmp_path, 8)))
    assert wrong.exit_code == 1
    assert "input 'features' of the ONNX graph is FP32 [-1, 8]" in wrong.output
    assert "[-1, 7]" in wrong.output

    garbage = tmp_path / "bad.onnx"
    garbage.write_bytes(b"not a model")
    result = invoke("models", "register", "fraud", "--file", str(garbage))
    assert result.exit_code == 1 and "not a loadable ONNX model" in result.output

    pickled = tmp_path / "model.joblib"
    pickled.write_bytes(b"\x80\x04")
    result = invoke("models", "register", "fraud", "--file", str(pickled))
    assert result.exit_code == 1 and "not a loadable scikit-learn model" in result.output

    result = invoke("models", "register", "fraud", "--file", str(tmp_path / "none.onnx"))
    assert result.exit_code == 1 and "no such file" in result.output

    result = invoke("models", "register", "nope", "--file", str(v1))
    assert result.exit_code == 1 and "takes the input schema" in result.output

    result = invoke("models", "register", "fraud", "--file", str(v1), "--schema-from", "9")
    assert result.exit_code == 1 and "'9'" in result.output

    result = invoke("models", "register", "fraud", "--file", str(v1), "--stage", "archived")
    assert result.exit_code == 2 and "--stage" in result.output

    assert ModelRegistry(LocalStore(store)).list_versions("fraud")[-1].version == "2"


def test_list_shows_what_the_rollout_state_serves(store: Path, redis_url: str) -> None:
    v1 = store / "fraud" / "1" / "model.onnx"
    assert invoke("models", "register", "fraud", "--file", str(v1)).exit_code == 0

    async def promote() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            rollout = RolloutStore(client)
            await rollout.set_primary("fraud", "1")
            await rollout.start_canary("fraud", "2", 5)
            await rollout.promote("fraud")
        finally:
            await client.aclose()

    asyncio.run(promote())
    out = invoke("models", "list").output
    rows = [
        [cell.strip() for cell in line.split("│")[1:5]]
        for line in out.splitlines()
        if line.startswith("│ fraud")
    ]
    assert rows == [["fraud", "1", "archived", ""], ["fraud", "2", "production", "yes"]]
