"""What shadow pairs log of each side's outputs."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from services.registry.schema import ModelSchema, TensorSpec
from services.registry.versions import ModelVersion
from services.rollout.shadow_outputs import comparable_outputs, like_primary


def _mv(schema: ModelSchema) -> ModelVersion:
    return ModelVersion(
        name="m",
        version="1",
        sha256="0" * 64,
        size_bytes=1,
        schema=schema,
        created=datetime(2027, 1, 1, tzinfo=UTC),
    )


TENSOR = ModelSchema(
    kind="tensor",
    inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 2])],
    outputs=[TensorSpec(name="label", datatype="INT64", shape=[-1])],
)


CLASSIFIER = ModelSchema(
    kind="tensor",
    inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 2])],
    outputs=[
        TensorSpec(name="label", datatype="INT64", shape=[-1]),
        TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 2]),
    ],
    labels=["legit", "fraud"],
    probability_output="probabilities",
)


def test_a_classifier_logs_label_and_probabilities_on_both_sides() -> None:
    mv = _mv(CLASSIFIER)
    probs = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)
    # The gateway's primary side only has the probability tensor (what the cache holds);
    # the candidate's runner also returns the ONNX label: both log the same two outputs.
    primary = comparable_outputs(mv, {"probabilities": probs})
    candidate = comparable_outputs(mv, {"label": np.array([1, 1]), "probabilities": probs})
    for side in (primary, candidate):
        assert sorted(side) == ["label", "probabilities"]
        assert side["label"].tolist() == [0, 1]  # the label the gateway answers: argmax
    assert comparable_outputs(_mv(TENSOR), {"label": [0]}) == {"label": [0]}  # not a classifier


def test_the_candidate_keeps_only_what_the_primary_logged() -> None:
    assert like_primary({"label": [0]}, {"label": [1], "debug": [0.0]}) == {"label": [1]}
    assert like_primary(None, {"label": [1]}) == {"label": [1]}
