"""The demo models, built offline and deterministically from the synthetic generator.

``fraud``: a gradient-boosted classifier on the request's (amount, merchant category,
hour, channel) and three batch features from the feature store (the user's 30-day mean
amount and count, the merchant category's smoothed fraud rate), exported to ONNX with
skl2onnx and registered as the production version. The training features are computed
by the same code as the daily materialization (``flows.recipes.batch_features``). Needs the
``demo`` extra (scikit-learn, skl2onnx); serving needs neither.

Each build stores the version's reference sample for drift reports (``reference.npz``):
held-out transactions assembled as the gateway assembles them from a materialized feature
store (every synthetic user has a 30-day history), and the model's answers on them.

Run ``python -m flows.recipes.demo_models`` (``make models`` does) to build what is missing.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from flows.recipes.batch_features import merchant_risk, user_stats
from flows.recipes.synthetic import CHANNELS, MERCHANT_CATEGORIES, TransactionGenerator
from monitoring.reference import ReferenceSample, reference_from_artifact, summarize
from services.registry.schema import FieldSpec, ModelSchema, TensorSpec
from services.registry.stores import open_store
from services.registry.versions import ModelRegistry, ModelVersion, Stage, check_onnx_artifact
from services.request.encoding import RecordEncoder
from services.settings import get_settings

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
        FieldSpec(
            name="avg_amount_30d",
            dtype="float",
            required=False,
            default=0.0,
            source="feature:user_stats.avg_amount_30d",
        ),
        FieldSpec(
            name="txn_count_30d",
            dtype="float",
            required=False,
            default=0.0,
            source="feature:user_stats.txn_count_30d",
        ),
        FieldSpec(
            name="risk_score",
            dtype="float",
            required=False,
            default=0.03,
            source="feature:merchant_risk.risk_score",
        ),
    ],
    inputs=[TensorSpec(name="features", datatype="FP32", shape=[-1, 7])],
    outputs=[
        TensorSpec(name="label", datatype="INT64", shape=[-1]),
        TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 2]),
    ],
    labels=["legit", "fraud"],
    probability_output="probabilities",
    entities={"user": "user_id", "merchant_category": "merchant_category"},
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
    users, merchants = batch_features(gen)
    train = gen.records(n_train, with_label=True, seed=seed + 100)
    test = gen.records(n_test, with_label=True, seed=seed + 200)
    x_train, x_test = vectors(train, users, merchants), vectors(test, users, merchants)
    y_train = np.array([r["is_fraud"] for r in train], dtype=np.int64)
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


def batch_features(
    gen: TransactionGenerator, days: int = 30, n: int = 50_000
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """The batch views as the daily materialization computes them from ``gen``'s history."""
    history = gen.history(days=days, n=n)
    return user_stats(history), merchant_risk(history)


def vectors(
    records: list[dict[str, Any]],
    users: dict[str, dict[str, float]],
    merchants: dict[str, dict[str, float]],
    unknown_share: float = 0.1,
) -> np.ndarray:
    """Model input rows: encoded request fields + the records' batch features."""
    encoder = RecordEncoder(FRAUD_SCHEMA)
    request = encoder.encode(records, ignore=frozenset({"user_id", "is_fraud"}))
    # Train on some users the feature store does not know yet (new users get defaults).
    known = np.random.default_rng(len(records)).random(len(records)) >= unknown_share
    feats = np.array(
        [
            [
                users.get(r["user_id"], {}).get("avg_amount_30d", 0.0) if k else 0.0,
                users.get(r["user_id"], {}).get("txn_count_30d", 0.0) if k else 0.0,
                merchants.get(r["merchant_category"], {}).get("risk_score", 0.03),
            ]
            for r, k in zip(records, known, strict=True)
        ],
        dtype=np.float32,
    )
    return np.hstack([request, feats])


def fraud_reference(data: bytes, rows: int, seed: int = 0) -> ReferenceSample:
    """The fraud model's reference sample: ``rows`` held-out transactions with the batch
    features of their users and categories, and the ONNX model's probabilities on them."""
    gen = TransactionGenerator(seed=seed)
    users, merchants = batch_features(gen)
    records = gen.records(rows, seed=seed + 300)
    x = vectors(records, users, merchants, unknown_share=0.0)
    sample = reference_from_artifact(
        FRAUD_SCHEMA, data, {"features": x}, rows=rows, source="demo-models"
    )
    assert sample is not None  # a tabular model always has one
    return sample


def ensure_demo_models(
    registry: ModelRegistry, reference_rows: int | None = None
) -> list[ModelVersion]:
    """Build and register the demo models that the registry lacks.

    Args:
        registry: where to register them.
        reference_rows: rows of each version's reference sample (default: the monitoring
            settings').
    """
    built = []
    if "fraud" not in registry.list_models():
        data, metrics = train_fraud()
        rows = reference_rows or get_settings().monitoring.reference_rows
        reference = fraud_reference(data, rows)
        metrics["reference"] = summarize(reference)
        mv = registry.register(
            "fraud",
            data,
            schema=FRAUD_SCHEMA,
            stage="production",
            metrics=metrics,
            description="Demo fraud classifier trained on servekit's synthetic transactions.",
            reference=reference.to_bytes(),
        )
        logger.info("built demo model fraud v%s (ROC AUC %.3f)", mv.version, metrics["roc_auc"])
        built.append(mv)
    return built


def retrain_fraud(registry: ModelRegistry, seed: int, stage: Stage = "staging") -> ModelVersion:
    """Retrain the fraud model with another seed (same synthetic world, other samples and
    trees) and register it as a new version of ``fraud``, checked against its schema."""
    data, metrics = train_fraud(seed=seed)
    check_onnx_artifact(data, FRAUD_SCHEMA)
    mv = registry.register(
        "fraud",
        data,
        schema=FRAUD_SCHEMA,
        stage=stage,
        metrics={**metrics, "seed": seed},
        description=f"Demo fraud classifier retrained with seed {seed}.",
    )
    logger.info("retrained fraud v%s, seed %d (ROC AUC %.3f)", mv.version, seed, metrics["roc_auc"])
    return mv


def main() -> None:
    """Build the demo models into the configured model store."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    registry = ModelRegistry(open_store(get_settings().serving))
    built = ensure_demo_models(registry)
    for mv in built:
        print(f"built {mv.name} version {mv.version}: {mv.metrics}")
    if not built:
        print(f"demo models present in {registry.store.url}: {registry.list_models()}")


if __name__ == "__main__":
    main()
