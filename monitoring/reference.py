"""Reference samples: what a model version saw and answered when it was registered.

A drift report compares a window of live traffic with the version's reference sample: a
few thousand rows of the model's input features, as the gateway logs them, and the
model's predictions on them. The sample is written at registration (the demo-model build,
the conversion flow) as ``reference.npz`` beside the artifact (``ModelRegistry.register``),
so it travels with the version to S3 and into BentoML's store. It is numpy only: no pandas
on the serving side, and no pickle (``allow_pickle=False``).

Layouts, shared by the reference and the live side (``monitoring.traffic``):

- features: tabular models, the assembled float32 vector in schema field order
  (categories as their index); text models, the text's length in tokens.
- outputs: classifiers, the class probabilities in label order; other models, the first
  output tensor flattened per row (a text model's embedding).
"""

from __future__ import annotations

import io
import logging
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.registry.schema import ModelSchema

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
TEXT_LENGTH = "text_length"
_CHUNK_ROWS = 256


@dataclass(frozen=True)
class ReferenceSample:
    """A version's reference rows.

    Attributes:
        features: float32 ``[rows, k]``, the input features (see the module's layouts).
        feature_names: the ``k`` column names.
        outputs: float32 ``[rows, m]``, the model's predictions on those rows.
        created: when the sample was taken (seconds since the epoch).
        source: what took it (``demo-models``, ``convert``).
    """

    features: np.ndarray
    feature_names: tuple[str, ...]
    outputs: np.ndarray
    created: float
    source: str

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or self.outputs.ndim != 2:
            raise ValueError("features and outputs must be 2-D")
        if len(self.features) != len(self.outputs):
            raise ValueError(
                f"{len(self.features)} feature rows but {len(self.outputs)} output rows"
            )
        if self.features.shape[1] != len(self.feature_names):
            raise ValueError(
                f"{self.features.shape[1]} feature columns but {len(self.feature_names)} names"
            )

    @property
    def rows(self) -> int:
        """Rows in the sample."""
        return len(self.features)

    def to_bytes(self) -> bytes:
        """The sample as a compressed ``.npz`` (no pickled objects)."""
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            format=np.array(FORMAT_VERSION),
            features=self.features.astype(np.float32),
            feature_names=np.array(self.feature_names, dtype=np.str_),
            outputs=self.outputs.astype(np.float32),
            created=np.array(self.created, dtype=np.float64),
            source=np.array(self.source, dtype=np.str_),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ReferenceSample:
        """Read a sample written by :meth:`to_bytes`; ``ValueError`` if it is not one."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                version = int(npz["format"])
                if version != FORMAT_VERSION:
                    raise ValueError(f"format {version}, expected {FORMAT_VERSION}")
                return cls(
                    features=npz["features"].astype(np.float32),
                    feature_names=tuple(str(n) for n in npz["feature_names"]),
                    outputs=npz["outputs"].astype(np.float32),
                    created=float(npz["created"]),
                    source=str(npz["source"]),
                )
        except (OSError, KeyError, EOFError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"not a reference sample: {exc}") from exc


def feature_names(schema: ModelSchema, width: int) -> tuple[str, ...]:
    """Column names of ``width`` logged features: the schema's fields for a tabular model
    whose vector they make up, ``text_length`` for a text model, else ``x0, x1, ...``."""
    if schema.kind == "text" and width == 1:
        return (TEXT_LENGTH,)
    if schema.kind == "tabular" and len(schema.fields) == width:
        return tuple(f.name for f in schema.fields)
    return tuple(f"x{i}" for i in range(width))


def output_matrix(schema: ModelSchema, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The outputs layout of raw backend outputs (probabilities, or the first output)."""
    name = schema.probability_output if schema.labels else None
    array = np.asarray(outputs[name or schema.outputs[0].name], dtype=np.float32)
    return array.reshape(len(array), -1)


def prediction_row(schema: ModelSchema, prediction: Mapping[str, Any]) -> list[float]:
    """One served prediction (as ``/predict`` answers it) in the outputs layout."""
    if schema.labels and schema.probability_output:
        probabilities = prediction["probabilities"]
        return [float(probabilities[label]) for label in schema.labels]
    return [float(v) for v in np.ravel(prediction[schema.outputs[0].name])]


def text_lengths(feeds: Mapping[str, np.ndarray]) -> np.ndarray:
    """Each text's length in tokens, from its attention mask: ``[rows, 1]`` float32."""
    mask = np.asarray(feeds["attention_mask"])
    return mask.sum(axis=1, keepdims=True).astype(np.float32)


def input_features(schema: ModelSchema, feeds: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The features layout of a batch of model inputs; None for a kind that has none
    (raw tensor models are served over the v2 protocol, whose requests are not logged)."""
    if schema.kind == "text":
        return text_lengths(feeds) if "attention_mask" in feeds else None
    if schema.kind == "tabular":
        array = np.asarray(feeds[schema.inputs[0].name], dtype=np.float32)
        return array.reshape(len(array), -1)
    return None


def _take(feeds: Mapping[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {name: np.asarray(v)[start:stop] for name, v in feeds.items()}


def reference_from_artifact(
    schema: ModelSchema,
    artifact: bytes,
    feeds: Mapping[str, np.ndarray],
    *,
    rows: int,
    source: str,
) -> ReferenceSample | None:
    """Run an ONNX artifact on (up to ``rows`` rows of) ``feeds`` and keep the sample.

    The predictions are the served artifact's own, on ONNX Runtime's CPU provider, so
    they are what the gateway answers for the same rows. Returns None for a model kind
    without logged features.
    """
    from services.runner.backends import OnnxRuntimeBackend

    n = min(rows, len(next(iter(feeds.values()))))
    features = input_features(schema, _take(feeds, 0, n))
    if features is None:
        logger.info("no reference sample for a %s model", schema.kind)
        return None
    backend = OnnxRuntimeBackend(artifact, providers=["CPUExecutionProvider"])
    chunks = [
        output_matrix(schema, backend.run(_take(feeds, i, min(i + _CHUNK_ROWS, n))))
        for i in range(0, n, _CHUNK_ROWS)
    ]
    return ReferenceSample(
        features=features,
        feature_names=feature_names(schema, features.shape[1]),
        outputs=np.vstack(chunks),
        created=time.time(),
        source=source,
    )


def summarize(sample: ReferenceSample) -> dict[str, Any]:
    """What the registry's metadata records about a sample (rows, columns, source)."""
    return {
        "rows": sample.rows,
        "features": list(sample.feature_names),
        "outputs": int(sample.outputs.shape[1]),
        "source": sample.source,
    }
