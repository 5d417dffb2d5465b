"""Text models in the gateway: tokenization, padding, pooling.

A text model's ONNX graph takes token tensors (``input_ids``, ``attention_mask`` and,
for BERT, ``token_type_ids``; int64, ``[batch, sequence]``). The gateway turns the
request's texts into those tensors with the ``tokenizers`` library, padded to the
request's longest sequence (never to the 128 tokens the shipped tokenizer.json pads to),
and the batcher pads a batch of requests to its longest (``services.runner.batching``).

The tokenizer travels with the model version: the conversion flow stores it beside the
artifact as ``<model>/<version>/tokenizer.json`` and records its sha256 in the version's
metrics under ``"tokenizer"``.

Embedding models export their pooling in the graph (one ``[batch, dim]`` output, so a
batch's padding never reaches the answer); a graph that returns token states
(``[batch, sequence, dim]``) is pooled here with the same mean pooling + L2 norm.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from services.errors import InvalidInputError, ModelLoadError
from services.registry.versions import ModelRegistry, ModelVersion

TOKENIZER_FILE = "tokenizer.json"
_TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def tokenizer_key(mv: ModelVersion) -> str:
    """The store key of a version's tokenizer."""
    return f"{mv.name}/{mv.version}/{TOKENIZER_FILE}"


class TextEncoder:
    """Tokenizes texts into a text model's int64 token tensors.

    Args:
        tokenizer_json: the tokenizer's ``tokenizer.json`` text.
        input_names: the model's token inputs (from its schema), in any order.
        max_length: longest sequence in tokens; longer texts are truncated (default: the
            tokenizer's own truncation length, else 512).
        max_chars: longest text accepted, in characters (tokenizing is linear in it).
    """

    def __init__(
        self,
        tokenizer_json: str,
        *,
        input_names: list[str],
        max_length: int | None = None,
        max_chars: int = 20_000,
    ) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:  # pragma: no cover - tokenizers is a main dependency
            raise ModelLoadError(
                "text models need the 'tokenizers' package: pip install servekit"
            ) from exc
        unknown = [n for n in input_names if n not in _TOKEN_INPUTS]
        if unknown:
            raise ModelLoadError(f"text model inputs {unknown} are not token tensors")
        tok = Tokenizer.from_str(tokenizer_json)
        padding = tok.padding or {}
        if max_length is None:
            max_length = int((tok.truncation or {}).get("max_length", 512))
        tok.enable_truncation(max_length=max_length)
        # length=None pads to the longest sequence of each call, not to a fixed length.
        tok.enable_padding(
            pad_id=padding.get("pad_id", 0),
            pad_type_id=padding.get("pad_type_id", 0),
            pad_token=padding.get("pad_token", "[PAD]"),
            length=None,
        )
        self.tokenizer = tok
        self.input_names = list(input_names)
        self.max_length = max_length
        self.max_chars = max_chars

    @classmethod
    def for_version(cls, registry: ModelRegistry, mv: ModelVersion) -> TextEncoder:
        """The encoder of a registered text model, its tokenizer checked against its sha256."""
        meta = mv.metrics.get("tokenizer") or {}
        try:
            raw = registry.store.get(tokenizer_key(mv))
        except KeyError:
            raise ModelLoadError(
                f"text model {mv.name} version {mv.version} has no {TOKENIZER_FILE} in "
                f"{registry.store.url}",
                model=mv.name,
                version=mv.version,
            ) from None
        expected = meta.get("sha256")
        if expected and hashlib.sha256(raw).hexdigest() != expected:
            raise ModelLoadError(
                f"the tokenizer of {mv.name} version {mv.version} does not match its sha256",
                model=mv.name,
                version=mv.version,
            )
        return cls(
            raw.decode(),
            input_names=[t.name for t in mv.model_schema.inputs],
            max_length=meta.get("max_length"),
        )

    def texts(self, records: list[Any]) -> list[str]:
        """The texts of ``/predict`` records (``{"text": "..."}``), validated."""
        out = []
        for i, rec in enumerate(records):
            text: Any
            if isinstance(rec, str):
                text = rec
            elif isinstance(rec, dict):
                extra = rec.keys() - {"text"}
                if extra:
                    name = sorted(extra)[0]
                    raise InvalidInputError(
                        f"inputs[{i}].{name} is not a field of this text model (fields: text)",
                        field=f"inputs[{i}].{name}",
                    )
                text = rec.get("text")
                if not isinstance(text, str):
                    raise InvalidInputError(
                        f"inputs[{i}].text must be a string", field=f"inputs[{i}].text"
                    )
            else:
                raise InvalidInputError(
                    f'inputs[{i}] must be {{"text": "..."}} or a string', field=f"inputs[{i}]"
                )
            if not text.strip():
                raise InvalidInputError(f"inputs[{i}].text is empty", field=f"inputs[{i}].text")
            if len(text) > self.max_chars:
                raise InvalidInputError(
                    f"inputs[{i}].text is {len(text)} characters, over {self.max_chars}",
                    field=f"inputs[{i}].text",
                )
            out.append(text)
        return out

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Token tensors for ``texts``, padded to their longest: ``[len(texts), longest]``."""
        encs = (
            [self.tokenizer.encode(texts[0])]
            if len(texts) == 1
            else self.tokenizer.encode_batch(texts)
        )
        arrays = {
            "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
        }
        return {n: arrays[n] for n in self.input_names}

    def embeddings(
        self, outputs: dict[str, np.ndarray], feeds: dict[str, np.ndarray]
    ) -> np.ndarray:
        """The ``[n, dim]`` float32 embeddings of ``n`` texts, from pooled or token outputs
        (no per-row Python lists: the answer is built from this array once)."""
        out = next(iter(outputs.values()))
        if out.ndim == 3:
            # Token states of a batch padded past this request's length: crop, then pool.
            mask = feeds["attention_mask"]
            out = l2_normalize(mean_pool(out[:, : mask.shape[1]], mask))
        return np.asarray(out, dtype=np.float32)

    def decode(
        self, outputs: dict[str, np.ndarray], feeds: dict[str, np.ndarray]
    ) -> list[dict[str, Any]]:
        """One ``{"embedding": [...]}`` per text, from pooled or token-level outputs."""
        return [{"embedding": row.tolist()} for row in self.embeddings(outputs, feeds)]


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of token states over the unpadded tokens: ``[b, t, d], [b, t] -> [b, d]``."""
    m = mask.astype(hidden.dtype)[..., None]
    return (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (as sentence-transformers' Normalize)."""
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``[n, d]`` arrays."""
    return (l2_normalize(a.astype(np.float64)) * l2_normalize(b.astype(np.float64))).sum(axis=1)
