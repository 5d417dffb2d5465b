"""The split shape batching at the gateway, over real HTTP: a split gateway (gateway +
ModelRunner through bentoml.depends, one run_batch call per batch) answers distinct inputs
exactly as a colocated one, with the prediction cache off on both; concurrent requests
reach the runner in batches; and the runner's errors reach clients as clear statuses."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
import orjson
import pytest

from flows.recipes.synthetic import TransactionGenerator
from services.edge.http import error_response
from services.errors import InvalidInputError, OverloadedError, ServekitError
from services.registry.stores import LocalStore
from services.registry.versions import ModelRegistry
from services.runner.pool import ModelPool
from services.runner.split import FrameServer, RemoteRunner, error_header, remote_error
from services.settings import Settings
from tests.conftest import ServerProcess
from tests.fixtures.fake_backends import Heap, feeds, heap_factory
from tests.fixtures.onnx_models import mlp_schema

# Bursts of up to 180 requests at once: the queueing budget (tested in test_admission*.py)
# would rightly refuse some of them, so these servers admit every request.
NO_CACHE = {
    "SERVEKIT_CACHE_ENABLED": "false",
    "SERVEKIT_ROLLOUT_ENABLED": "false",
    "SERVEKIT_BATCH_QUEUE_BUDGET_MS": "0",
}


@pytest.fixture(scope="module")
def servers(fraud_store: Path, serving_redis_url: str) -> Iterator[dict[str, ServerProcess]]:
    base = {"SERVEKIT_MODEL_STORE": str(fraud_store), "SERVEKIT_REDIS_URL": serving_redis_url}
    started: dict[str, ServerProcess] = {}
    try:
        started["colocated"] = ServerProcess({**base, **NO_CACHE})
        started["split"] = ServerProcess({**base, **NO_CACHE, "SERVEKIT_SHAPE": "split"})
        yield started
    finally:
        for server in started.values():
            server.stop()


def records(n: int, seed: int) -> list[dict[str, Any]]:
    return list(TransactionGenerator(seed=seed).records(n))


async def predict_all(url: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every body posted to ``/predict`` at once; the answers in order (all 200)."""
    async with aiohttp.ClientSession() as session:

        async def one(body: dict[str, Any]) -> dict[str, Any]:
            async with session.post(f"{url}/predict", data=orjson.dumps(body)) as r:
                assert r.status == 200, await r.text()
                return orjson.loads(await r.read())  # type: ignore[no-any-return]

        return await asyncio.gather(*(one(b) for b in bodies))


def predictions(answers: list[dict[str, Any]]) -> list[Any]:
    return [(a["version"], a["predictions"]) for a in answers]


def batches(url: str) -> tuple[float, float]:
    """(batches, rows) the gateway's batcher ran, from its /metrics."""
    count = rows = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("servekit_batch_rows_count"):
            count += float(line.rsplit(" ", 1)[1])
        elif line.startswith("servekit_batch_rows_sum"):
            rows += float(line.rsplit(" ", 1)[1])
    return count, rows


@pytest.mark.slow
def test_split_answers_distinct_inputs_exactly_as_colocated(
    servers: dict[str, ServerProcess],
) -> None:
    # 120 one-record requests at once (batched differently on each side), then
    # multi-record requests of distinct records.
    singles = [{"model": "fraud", "inputs": [r]} for r in records(120, seed=101)]
    multi = records(60, seed=202)
    multis = [{"model": "fraud", "inputs": multi[i : i + 6]} for i in range(0, 60, 6)]
    answers = {
        shape: asyncio.run(predict_all(server.url, singles + multis))
        for shape, server in servers.items()
    }
    colocated, split = predictions(answers["colocated"]), predictions(answers["split"])
    assert all(not p["cached"] for _, preds in split for p in preds)
    assert len({str(p["probabilities"]) for _, preds in split for p in preds}) > 50
    assert split == colocated
    # The v2 route: the same tensors, the same outputs.
    x = np.random.default_rng(3).uniform(0, 50, (5, 7)).round(3).tolist()
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [5, 7], "data": x}]}
    v2 = [
        httpx.post(f"{s.url}/v2/models/fraud/infer", json=body, timeout=10).json()["outputs"]
        for s in servers.values()
    ]
    assert v2[0] == v2[1]


@pytest.mark.slow
def test_split_gateway_sends_batches_to_the_runner(servers: dict[str, ServerProcess]) -> None:
    url = servers["split"].url
    b0, r0 = batches(url)
    bodies = [{"model": "fraud", "inputs": [r]} for r in records(200, seed=303)]
    asyncio.run(predict_all(url, bodies))
    b1, r1 = batches(url)
    assert r1 - r0 == 200  # every row went through the gateway's batcher
    assert b1 - b0 < 200  # in fewer runner calls than requests


@pytest.fixture
def pool(tmp_path: Path) -> ModelPool:
    registry = ModelRegistry(LocalStore(tmp_path))
    registry.register("a", bytes(1000), schema=mlp_schema(1))
    return ModelPool(
        registry,
        Settings(),
        backend_factory=heap_factory(Heap(), lambda mv: 1000),
        memory_probe=Heap(),
    )


class FailingProxy:
    """``to_async.call`` answers every frame with ``reply`` (a runner-side failure)."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.to_async = self

    async def call(self, name: str, frame: bytes) -> bytes:
        return self.reply


def status_of(exc: ServekitError) -> tuple[int, dict[str, Any], str | None]:
    resp = error_response(exc)
    headers = dict(resp.headers)
    retry = headers.get(b"retry-after")
    return resp.status, orjson.loads(resp.body), retry.decode() if retry else None


@pytest.mark.parametrize(
    "runner_error, status, retry_after, body_type",
    [
        (OverloadedError("the runner's queue is full", retry_after=4, limit=64), 503, "4", "OverloadedError"),
        (InvalidInputError("inputs[0] (x) has shape [1, 2]", field="inputs[0]"), 422, None, "InvalidInputError"),
        (None, 503, "1", "ModelLoadError"),  # not a servekit error: ORT's own failure
    ],
)  # fmt: skip
async def test_runner_errors_reach_clients_as_clear_statuses(
    pool: ModelPool,
    runner_error: ServekitError | None,
    status: int,
    retry_after: str | None,
    body_type: str,
) -> None:
    from services.runner import wire

    header = (
        error_header(runner_error)
        if runner_error is not None
        else {"error": "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT", "type": "InvalidArgument"}
    )
    runner = RemoteRunner(FailingProxy(wire.encode(header)), Settings())
    with pytest.raises(ServekitError) as caught:
        await runner.infer(pool.registry.get("a"), feeds(1.0), 1)
    got_status, body, got_retry = status_of(caught.value)
    assert (got_status, got_retry, body["type"]) == (status, retry_after, body_type)
    if runner_error is not None:
        assert body == {**runner_error.to_dict()}
    else:
        assert body["error"].startswith("runner failed on a version 1: [ONNXRuntimeError]")
    await runner.close()
    await pool.close()


async def test_unknown_version_in_the_runner_is_a_404(pool: ModelPool) -> None:
    server = FrameServer(pool)
    gone = pool.registry.get("a").model_copy(update={"version": "7"})

    class Proxy:
        to_async = None

        async def call(self, name: str, frame: bytes) -> bytes:
            return await server.serve(frame)

    proxy = Proxy()
    proxy.to_async = proxy  # type: ignore[assignment]
    runner = RemoteRunner(proxy, Settings())
    with pytest.raises(ServekitError) as caught:
        await runner.infer(gone, feeds(1.0), 1)
    status, body, _ = status_of(caught.value)
    assert status == 404 and body["error"] == "unknown version '7' of model 'a'"
    assert remote_error(error_header(caught.value), "a", "7").to_dict() == body
    await runner.close()
    await pool.close()
