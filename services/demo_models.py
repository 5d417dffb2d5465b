"""The demo models, built offline and deterministically from the synthetic generator.

``fraud``: a gradient-boosted classifier on (amount, merchant category, hour, channel),
exported to ONNX with skl2onnx and registered as the production version. Needs the
``demo`` extra (scikit-learn, skl2onnx); serving needs neither.

Run ``python -m services.demo_models`` (``make models`` does) to build what is missing.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from services.registry import ModelRegistry, ModelVersion
from services.schema import FieldSpec, ModelSchema, RecordEncoder, TensorSpec
from services.synthetic import CHANNELS, MERCHANT_CATEGORIES, TransactionGenerator

logger = logging.getLogger(__name__)

FRAUD_SCHEMA = ModelSchema(
    kind="tabular",
    fields=[
        FieldSpec(
            name="amount", dtype="float", min=0.0, max=1_000_000.0, description="Amount in EUR."
        ),
        FieldSpec(name="merchant_category", dtype="category", categories=list(MERCHANT_CATEGORIES)),
        FieldSpec(name="hour", dtype="int", min=0, max=23, description="Local hour of day."),
        FieldSpec(name="channel", dtype="category", categories=list(CHANNELS)),
    ],
    inputs=[TensorSpec(name="features", datatype="FP32", shape=[-1, 4])],
    outputs=[
        TensorSpec(name="label", datatype="INT64", shape=[-1]),
        TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 2]),
    ],
    labels=["legit", "fraud"],
    probability_output="probabilities",
    entity_fields=["user_id"],
)


def train_fraud(
    seed: int = 0, n_train: int = 40_000, n_test: int = 10_000, n_estimators: int = 60
) -> tuple[bytes, dict[str, Any]]:
    """Train the fraud classifier and export it to ONNX. Returns (onnx bytes, metrics)."""
    try:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType
        from sklearn.ensemble import GradientBoostingClassifier
        from sklearn.metrics import roc_auc_score
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "building the demo models needs the 'demo' extra: pip install 'servekit[demo]'"
        ) from exc

    gen = TransactionGenerator(seed=seed)
    encoder = RecordEncoder(FRAUD_SCHEMA)
    train = gen.records(n_train, with_label=True, seed=seed + 100)
    test = gen.records(n_test, with_label=True, seed=seed + 200)
    ignore = frozenset({"user_id", "is_fraud"})
    x_train = encoder.encode(train, ignore=ignore)
    y_train = np.array([r["is_fraud"] for r in train], dtype=np.int64)
    x_test = encoder.encode(test, ignore=ignore)
    y_test = np.array([r["is_fraud"] for r in test], dtype=np.int64)

    clf = GradientBoostingClassifier(n_estimators=n_estimators, max_depth=3, random_state=seed)
    clf.fit(x_train, y_train)
    auc = float(roc_auc_score(y_test, clf.predict_proba(x_test)[:, 1]))
    onx = convert_sklearn(
        clf,
        initial_types=[("features", FloatTensorType([None, x_train.shape[1]]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    metrics = {
        "roc_auc": round(auc, 4),
        "fraud_rate": round(float(y_test.mean()), 4),
        "n_train": n_train,
        "trainer": f"sklearn GradientBoostingClassifier(n_estimators={n_estimators}, max_depth=3)",
    }
    return onx.SerializeToString(), metrics


def ensure_demo_models(registry: ModelRegistry) -> list[ModelVersion]:
    """Build and register the demo models that the registry lacks."""
    built = []
    if "fraud" not in registry.list_models():
        data, metrics = train_fraud()
        mv = registry.register(
            "fraud",
            data,
            schema=FRAUD_SCHEMA,
            stage="production",
            metrics=metrics,
            description="Demo fraud classifier trained on servekit's synthetic transactions.",
        )
        logger.info("built demo model fraud v%s (ROC AUC %.3f)", mv.version, metrics["roc_auc"])
        built.append(mv)
    return built


def main() -> None:
    """Build the demo models into the configured model store."""
    from services.settings import get_settings
    from services.stores import open_store

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    registry = ModelRegistry(open_store(get_settings().serving))
    built = ensure_demo_models(registry)
    for mv in built:
        print(f"built {mv.name} version {mv.version}: {mv.metrics}")
    if not built:
        print(f"demo models present in {registry.store.url}: {registry.list_models()}")


if __name__ == "__main__":
    main()
