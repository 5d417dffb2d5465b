"""The report's tables: decoded features and the prediction columns of each model kind."""

from __future__ import annotations

import numpy as np

from flows.recipes.demo_models import FRAUD_SCHEMA
from monitoring.drift_frames import build_frames, current_frame, principal_components
from services.registry.schema import FieldSpec, ModelSchema, TensorSpec

NAMES = tuple(f.name for f in FRAUD_SCHEMA.fields)


def _fraud_rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack(
        [
            rng.lognormal(3.6, 0.7, n),
            rng.integers(0, 8, n),
            rng.integers(0, 24, n),
            rng.integers(0, 3, n),
            rng.random(n) * 100,
            rng.integers(1, 90, n),
            rng.random(n) / 10,
        ]
    ).astype(np.float32)


def _probs(n: int, seed: int) -> np.ndarray:
    p = np.random.default_rng(seed).random(n).astype(np.float32)
    return np.column_stack([1 - p, p])


def test_tabular_features_decode_categories_and_classifier_predictions() -> None:
    ref, cur = _fraud_rows(50, 0), _fraud_rows(20, 1)
    cur[0, 1] = 42  # an index no category has
    frames = build_frames(
        FRAUD_SCHEMA, NAMES, (ref, _probs(50, 0)), (cur, _probs(20, 1)), components=3
    )
    assert frames.features == list(NAMES)
    assert frames.predictions == ["prediction", "proba_fraud"]
    assert set(frames.categorical) == {"merchant_category", "channel", "prediction"}
    assert frames.reference["channel"].isin(["pos", "online", "atm"]).all()
    assert frames.current["merchant_category"].iloc[0] == "unknown"
    assert set(frames.reference["prediction"]) <= {"legit", "fraud"}
    assert list(frames.current.columns) == [*NAMES, "prediction", "proba_fraud"]
    assert frames.notes == []


def test_missing_features_are_noted_and_predictions_still_compared() -> None:
    frames = build_frames(
        FRAUD_SCHEMA, NAMES, (_fraud_rows(10, 0), _probs(10, 0)), (None, _probs(5, 1)),
        components=3,
    )  # fmt: skip
    assert frames.features == [] and frames.predictions == ["prediction", "proba_fraud"]
    assert "not in the prediction stream" in frames.notes[0]


def test_embeddings_become_norm_and_principal_components() -> None:
    schema = ModelSchema(
        kind="text",
        inputs=[TensorSpec(name="input_ids", datatype="INT64", shape=[-1, -1])],
        outputs=[TensorSpec(name="embedding", datatype="FP32", shape=[-1, 16])],
    )
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 16)) * np.linspace(3, 0.1, 16)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    frames = build_frames(
        schema, ("text_length",), (rng.integers(3, 20, (200, 1)), ref.astype(np.float32)),
        (rng.integers(3, 20, (30, 1)), ref[:30].astype(np.float32)), components=4,
    )  # fmt: skip
    assert frames.features == ["text_length"]
    assert frames.predictions == ["embedding_norm"] + [f"embedding_pc{i}" for i in range(1, 5)]
    np.testing.assert_allclose(frames.reference["embedding_norm"], 1.0, rtol=1e-5)
    # The components are centred on the reference and ordered by variance.
    pcs = frames.reference[[f"embedding_pc{i}" for i in range(1, 5)]].to_numpy()
    np.testing.assert_allclose(pcs.mean(axis=0), 0, atol=1e-9)
    assert (np.diff(pcs.var(axis=0)) <= 0).all()
    # The same rows give the same projection on both sides.
    np.testing.assert_allclose(
        frames.current["embedding_pc1"], frames.reference["embedding_pc1"][:30]
    )


def test_principal_axes_have_a_fixed_sign() -> None:
    x = np.random.default_rng(3).normal(size=(100, 5))
    _, axes = principal_components(x, 3)
    _, flipped = principal_components(-x, 3)
    np.testing.assert_allclose(axes, flipped, atol=1e-9)
    assert all(a[np.abs(a).argmax()] > 0 for a in axes)


def test_narrow_outputs_and_booleans() -> None:
    schema = ModelSchema(
        kind="tabular",
        fields=[FieldSpec(name="flag", dtype="bool"), FieldSpec(name="n", dtype="int")],
        inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 2])],
        outputs=[TensorSpec(name="score", datatype="FP32", shape=[-1, 1])],
    )
    x = np.array([[1, 3], [0, 4]], dtype=np.float32)
    frames = build_frames(
        schema, ("flag", "n"), (x, np.ones((2, 1))), (x, np.zeros((2, 1))), components=2
    )
    assert frames.reference["flag"].tolist() == ["true", "false"]
    assert frames.numerical == ["n", "score"] and frames.predictions == ["score"]


def test_current_frame_alone() -> None:
    table, numerical, categorical = current_frame(FRAUD_SCHEMA, _fraud_rows(4, 2))
    assert list(table.columns) == list(NAMES) and len(table) == 4
    assert categorical == ["merchant_category", "channel"] and "amount" in numerical
    assert current_frame(FRAUD_SCHEMA, None)[0].empty
