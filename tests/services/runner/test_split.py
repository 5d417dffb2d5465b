"""The split shape's wire: ModelRunner runs a batch of items grouped by version (one
group's failure fails only its items); the gateway's RemoteRunner turns an error item
into a 503 and passes outputs through."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.errors import ModelLoadError, UnavailableError
from services.registry.stores import LocalStore
from services.registry.versions import ModelRegistry
from services.runner.pool import ModelPool
from services.runner.split import RemoteRunner, resident_versions, run_items
from services.settings import Settings
from tests.fixtures.fake_backends import Heap, feeds, heap_factory
from tests.fixtures.onnx_models import mlp_schema


@pytest.fixture
def pool(tmp_path: Path) -> ModelPool:
    registry = ModelRegistry(LocalStore(tmp_path))
    for name in ("a", "b"):
        registry.register(name, bytes(1000), schema=mlp_schema(1))
    return ModelPool(
        registry,
        Settings(),
        backend_factory=heap_factory(Heap(), lambda mv: 1000),
        memory_probe=Heap(),
    )


def item(model: str, *values: float, version: str = "1") -> dict[str, Any]:
    return {"model": model, "version": version, "feeds": feeds(*values)}


async def test_items_run_grouped_by_version_and_failures_stay_in_their_group(
    pool: ModelPool,
) -> None:
    items = [item("a", 1.0), item("b", 2.0, 3.0), item("a", 4.0), item("nope", 5.0)]
    out = run_items(pool, items)
    assert out[0]["y"].tolist() == [[2.0]]
    assert out[1]["y"].tolist() == [[4.0], [6.0]]
    assert out[2]["y"].tolist() == [[8.0]]
    assert set(out[3]) == {"error"} and "nope" in out[3]["error"]
    assert set(resident_versions(pool)) == {"a:1", "b:1"}  # loaded on first use
    assert resident_versions(pool)["a:1"]["loaded"] is True
    await pool.close()


class Proxy:
    """Stands in for the ``bentoml.depends`` handle: ``to_async.infer`` answers ``reply``."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.reply = reply
        self.sent: list[Any] = []
        self.to_async = self

    async def infer(self, items: list[Any]) -> list[Any]:
        self.sent.append(items)
        return [self.reply]


async def test_remote_runner_sends_one_item_and_returns_its_outputs(pool: ModelPool) -> None:
    mv = pool.registry.get("a")
    proxy = Proxy({"y": np.ones((1, 1), np.float32)})
    out = await RemoteRunner(proxy).infer(mv, feeds(1.0), 1)
    assert out["y"].tolist() == [[1.0]]
    ((sent,),) = proxy.sent
    assert sent["model"] == "a" and sent["version"] == "1" and "x" in sent["feeds"]
    # An output tensor named "error" is an output, not a failure.
    tensor = await RemoteRunner(Proxy({"error": np.zeros((1, 1)), "y": 1})).infer(mv, {}, 1)
    assert isinstance(tensor["error"], np.ndarray)
    assert RemoteRunner(proxy).describe() == {}
    await pool.close()


async def test_remote_runner_turns_an_error_item_into_a_load_error(pool: ModelPool) -> None:
    mv = pool.registry.get("a")
    with pytest.raises(ModelLoadError, match="runner failed on a version 1: boom"):
        await RemoteRunner(Proxy({"error": "boom"})).infer(mv, feeds(1.0), 1)
    await pool.close()


class SilentProxy:
    """A runner that takes the request and never answers (restarting after a crash)."""

    def __init__(self) -> None:
        self.to_async = self

    async def infer(self, items: list[Any]) -> list[Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_remote_runner_answers_503_when_the_runner_does_not(pool: ModelPool) -> None:
    mv = pool.registry.get("a")
    with pytest.raises(UnavailableError, match="model runner is unavailable") as info:
        await RemoteRunner(SilentProxy(), timeout_s=0.05).infer(mv, feeds(1.0), 1)
    assert not isinstance(info.value, ModelLoadError) and info.value.retry_after == 2
    await pool.close()
