"""Reference samples: the .npz format, what is sampled, and the shared layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flows.recipes.demo_models import FRAUD_SCHEMA
from flows.recipes.mlp import expected, mlp_onnx, mlp_schema
from monitoring.reference import (
    TEXT_LENGTH,
    ReferenceSample,
    feature_names,
    input_features,
    output_matrix,
    prediction_row,
    reference_from_artifact,
)
from services.registry.schema import FieldSpec, ModelSchema, TensorSpec
from services.registry.stores import LocalStore
from services.registry.versions import ModelRegistry
from services.request.encoding import decode_predictions

TABULAR = ModelSchema(
    kind="tabular",
    fields=[FieldSpec(name=n, dtype="float") for n in ("a", "b", "c")],
    inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 3])],
    outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 2])],
)
TEXT = ModelSchema(
    kind="text",
    inputs=[TensorSpec(name="attention_mask", datatype="INT64", shape=[-1, -1])],
    outputs=[TensorSpec(name="embedding", datatype="FP32", shape=[-1, 4])],
)


def _sample(rows: int = 5) -> ReferenceSample:
    rng = np.random.default_rng(0)
    return ReferenceSample(
        features=rng.normal(size=(rows, 3)).astype(np.float32),
        feature_names=("a", "b", "c"),
        outputs=rng.random((rows, 2)).astype(np.float32),
        created=123.5,
        source="test",
    )


def test_npz_round_trip_without_pickle() -> None:
    sample = _sample()
    back = ReferenceSample.from_bytes(sample.to_bytes())
    np.testing.assert_array_equal(back.features, sample.features)
    np.testing.assert_array_equal(back.outputs, sample.outputs)
    assert (back.feature_names, back.created, back.source, back.rows) == (
        ("a", "b", "c"),
        123.5,
        "test",
        5,
    )


def test_unreadable_or_inconsistent_samples_are_refused() -> None:
    with pytest.raises(ValueError, match="not a reference sample"):
        ReferenceSample.from_bytes(b"not an npz")
    with pytest.raises(ValueError, match="output rows"):
        ReferenceSample(np.zeros((2, 1)), ("a",), np.zeros((3, 1)), 0.0, "t")
    with pytest.raises(ValueError, match="names"):
        ReferenceSample(np.zeros((2, 2)), ("a",), np.zeros((2, 1)), 0.0, "t")


def test_reference_runs_the_artifact_on_the_sampled_rows() -> None:
    x = np.random.default_rng(1).normal(size=(700, 3)).astype(np.float32)
    sample = reference_from_artifact(TABULAR, mlp_onnx(3, 8), {"x": x}, rows=600, source="convert")
    assert sample is not None and sample.rows == 600 and sample.feature_names == ("a", "b", "c")
    np.testing.assert_array_equal(sample.features, x[:600])
    np.testing.assert_allclose(sample.outputs, expected(3, 8, x[:600]), rtol=1e-4, atol=1e-4)


def test_raw_tensor_models_get_no_reference() -> None:
    x = np.zeros((4, 3), dtype=np.float32)
    assert (
        reference_from_artifact(mlp_schema(3), mlp_onnx(3, 8), {"x": x}, rows=4, source="t") is None
    )


def test_layouts_of_served_predictions_match_the_backend_outputs() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)
    served = decode_predictions(FRAUD_SCHEMA, {"probabilities": probs})
    rows = [prediction_row(FRAUD_SCHEMA, p) for p in served]
    np.testing.assert_allclose(rows, output_matrix(FRAUD_SCHEMA, {"probabilities": probs}))
    emb = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert prediction_row(TEXT, {"embedding": emb[1].tolist(), "cached": False}) == [4, 5, 6, 7]
    np.testing.assert_array_equal(output_matrix(TEXT, {"embedding": emb}), emb)


def test_feature_layouts() -> None:
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    lengths = input_features(TEXT, {"attention_mask": mask})
    assert lengths is not None and lengths.tolist() == [[3.0], [2.0]]
    assert feature_names(TEXT, 1) == (TEXT_LENGTH,)
    assert feature_names(FRAUD_SCHEMA, 7)[:2] == ("amount", "merchant_category")
    assert feature_names(FRAUD_SCHEMA, 3) == ("x0", "x1", "x2")  # does not fit the schema


def test_demo_model_is_registered_with_its_reference(fraud_store: Path) -> None:
    registry = ModelRegistry(LocalStore(fraud_store))
    mv = registry.get("fraud")
    raw = registry.load_reference(mv)
    assert raw is not None
    sample = ReferenceSample.from_bytes(raw)
    assert sample.rows == mv.metrics["reference"]["rows"] >= 1000
    assert sample.feature_names == tuple(f.name for f in FRAUD_SCHEMA.fields)
    # Every synthetic user has a history: no row took the feature defaults.
    assert (sample.features[:, 5] > 0).all()
    # The stored predictions are the served model's.
    from tests.monitoring.fraud_traffic import served

    preds = served(registry, mv, sample.features[:50])
    np.testing.assert_allclose(
        [prediction_row(FRAUD_SCHEMA, p) for p in preds], sample.outputs[:50], atol=1e-6
    )
