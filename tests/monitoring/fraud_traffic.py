"""Synthetic fraud traffic as the gateway logs it, for drift tests without a server.

The rows are assembled as the gateway assembles them from a materialized feature store
(request fields + the users' and categories' batch features), the predictions are the
registered ONNX model's, decoded as ``/predict`` answers them, and the entries go through
the real ``PredictionLog`` into the real prediction stream.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from flows.recipes.demo_models import FRAUD_SCHEMA, batch_features, vectors
from flows.recipes.synthetic import Shift, TransactionGenerator
from services.registry.versions import ModelRegistry, ModelVersion
from services.request.encoding import decode_predictions
from services.rollout.prediction_log import PredictionEvent, PredictionLog
from services.runner.backends import OnnxRuntimeBackend

SHIFT = Shift(amount_scale=5.0, night_share=0.3)
"""Amounts x5 and a third of the traffic moved to the night: amount and hour drift."""


@functools.cache
def _views() -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    return batch_features(TransactionGenerator(seed=0))


def fraud_rows(n: int, *, seed: int, shift: Shift | None = None) -> np.ndarray:
    """``n`` assembled feature rows of the demo world (same users as the demo model's)."""
    users, merchants = _views()
    records = TransactionGenerator(seed=0, shift=shift).records(n, seed=seed)
    return vectors(records, users, merchants, unknown_share=0.0)


def served(registry: ModelRegistry, mv: ModelVersion, x: np.ndarray) -> list[dict[str, Any]]:
    """The version's answers to ``x`` as ``/predict`` gives them."""
    backend = OnnxRuntimeBackend(registry.load_artifact(mv), providers=["CPUExecutionProvider"])
    probabilities = backend.run({"features": x})["probabilities"]
    return decode_predictions(FRAUD_SCHEMA, {"probabilities": probabilities})


async def log_traffic(
    client: aioredis.Redis,
    model: str,
    version: str,
    x: np.ndarray,
    predictions: list[dict[str, Any]],
    *,
    per_request: int = 64,
    ts: float | None = None,
) -> None:
    """Write the rows as logged requests of ``per_request`` records each."""
    log = PredictionLog(client)
    stamp = time.time() if ts is None else ts
    for i in range(0, len(x), per_request):
        log.append(
            PredictionEvent(
                model=model,
                version=version,
                variant="primary",
                unit="request",
                request_id=f"r{i}",
                latency_ms=1.0,
                inputs=x[i : i + per_request],
                output=predictions[i : i + per_request],
                ts=stamp,
            )
        )
    await log.flush()
