"""Both deployment shapes: the gateway depends on ModelRunner only in the split shape;
over real HTTP the split shape (gateway + ModelRunner through bentoml.depends) answers
exactly as the colocated one; a full queue sheds with 503."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import pytest

from tests.conftest import REQUEST_ID_SECRET, ROOT, ServerProcess

GOOD = {"amount": 12.5, "merchant_category": "grocery", "hour": 3, "channel": "online"}
RISKY = {"amount": 4000.0, "merchant_category": "crypto", "hour": 2, "channel": "online"}


def gateway_services(shape: str) -> dict[str, object]:
    """The Gateway's dependencies and the services ``bentoml serve`` would start."""
    code = (
        "import json; from services.service import Gateway; "
        "print(json.dumps({'dependencies': sorted(Gateway.dependencies), "
        "'services': sorted(Gateway.all_services())}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "SERVEKIT_SHAPE": shape, "BENTOML_DO_NOT_TRACK": "true"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_split_gateway_depends_on_the_runner() -> None:
    assert gateway_services("split") == {
        "dependencies": ["runner"],
        "services": ["servekit", "servekit-runner"],
    }


def test_colocated_gateway_starts_no_runner() -> None:
    assert gateway_services("colocated") == {"dependencies": [], "services": ["servekit"]}


@pytest.fixture(scope="module")
def split_gateway(fraud_store: Path, serving_redis_url: str) -> Iterator[ServerProcess]:
    """The split shape with its prediction cache off: every answer is its runner's own (the
    colocated gateway shares this Redis, and its cache would hold the same inputs)."""
    server = ServerProcess(
        {
            "SERVEKIT_SHAPE": "split",
            "SERVEKIT_MODEL_STORE": str(fraud_store),
            "SERVEKIT_REDIS_URL": serving_redis_url,
            "SERVEKIT_CACHE_ENABLED": "false",
            "SERVEKIT_REQUEST_ID_SECRET": REQUEST_ID_SECRET,  # signs as the other does
            # Its concurrency test sends bursts; the queueing budget is tested elsewhere.
            "SERVEKIT_BATCH_QUEUE_BUDGET_MS": "0",
        }
    )
    yield server
    server.stop()


def fresh_records(n: int) -> list[dict[str, object]]:
    """``n`` records no earlier request sent (so no prediction cache holds them), risky and
    ordinary ones alternating."""
    rng = np.random.default_rng(uuid.uuid4().int)
    return [
        {**(RISKY if i % 2 else GOOD), "amount": round(float(rng.uniform(1, 5000)), 2),
         "hour": int(rng.integers(0, 24))}
        for i in range(n)
    ]  # fmt: skip


@pytest.mark.slow
def test_split_matches_colocated(gateway: ServerProcess, split_gateway: ServerProcess) -> None:
    """Both shapes compute the same answers: records new to the colocated gateway's cache, and
    the split gateway's cache off, so neither side answers from a cache."""
    payload = {"model": "fraud", "inputs": fresh_records(12), "request_id": "same"}
    a = httpx.post(f"{gateway.url}/predict", json=payload, timeout=10).json()
    b = httpx.post(f"{split_gateway.url}/predict", json=payload, timeout=10).json()
    for body in (a, b):
        assert [p["cached"] for p in body["predictions"]] == [False] * 12
    assert len({str(p["probabilities"]) for p in a["predictions"]}) > 1  # not one constant
    assert a == b


@pytest.mark.slow
def test_feedback_verifies_on_another_replica_sharing_the_secret(
    gateway: ServerProcess, split_gateway: ServerProcess
) -> None:
    answer = httpx.post(
        f"{gateway.url}/predict", json={"model": "fraud", "inputs": [GOOD]}, timeout=10
    ).json()
    outcome = {"signed_request_id": answer["signed_request_id"], "outcome": 1}
    # The split gateway has no ingest token: a loopback client may post.
    resp = httpx.post(f"{split_gateway.url}/feedback", json=outcome, timeout=10)
    assert resp.status_code == 201, resp.text
    assert resp.json()["request_id"] == answer["request_id"]


@pytest.mark.slow
def test_split_under_concurrency_batches_and_answers_all(split_gateway: ServerProcess) -> None:
    async def run() -> list[int]:
        async with aiohttp.ClientSession() as s:

            async def one(i: int) -> int:
                rec = {**GOOD, "amount": float(i)}
                async with s.post(
                    f"{split_gateway.url}/predict", json={"model": "fraud", "inputs": [rec]}
                ) as r:
                    body = await r.json()
                    assert body["predictions"][0]["label"] in ("legit", "fraud")
                    return r.status

            return await asyncio.gather(*(one(i) for i in range(200)))

    assert set(asyncio.run(run())) == {200}


@pytest.mark.slow
def test_full_queue_answers_503_with_retry_after(fraud_store: Path, serving_redis_url: str) -> None:
    server = ServerProcess(
        {
            "SERVEKIT_MODEL_STORE": str(fraud_store),
            "SERVEKIT_REDIS_URL": serving_redis_url,
            "SERVEKIT_BATCH_QUEUE_LIMIT": "2",
            "SERVEKIT_CACHE_ENABLED": "false",
        }
    )
    try:

        async def run() -> list[tuple[int, str | None]]:
            async with aiohttp.ClientSession() as s:

                async def one() -> tuple[int, str | None]:
                    async with s.post(
                        f"{server.url}/predict", json={"model": "fraud", "inputs": [GOOD] * 2}
                    ) as r:
                        await r.read()
                        return r.status, r.headers.get("Retry-After")

                out: list[tuple[int, str | None]] = []
                for _ in range(5):
                    out += await asyncio.gather(*(one() for _ in range(64)))
                return out

        results = asyncio.run(run())
    finally:
        server.stop()
    statuses = {s for s, _ in results}
    assert statuses <= {200, 503}
    assert 503 in statuses and 200 in statuses
    assert all(ra is not None and int(ra) >= 1 for s, ra in results if s == 503)
