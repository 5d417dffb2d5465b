"""The plain BentoML peer: the fraud model's ONNX file served as BentoML's documentation
shows it, a ``@bentoml.service`` whose ``@bentoml.api(batchable=True)`` calls ONNX Runtime.

It takes the finished feature vectors (``{"features": [[7 floats], ...]}``) and answers the
class probabilities: no schema validation, feature store, cache or routing, so it measures
BentoML's own serving path (its HTTP server, pydantic IO and adaptive batching dispatcher)
around the same model. ``benchmarks/serving.py`` starts it with
``bentoml serve benchmarks.peers.bentoml_onnx:FraudOnnx`` and the model's path in
``PEER_ONNX_MODEL``. One ONNX Runtime thread, as servekit's sessions have by default.
"""

from __future__ import annotations

import os

import bentoml
import numpy as np


@bentoml.service(workers=1, traffic={"timeout": 60})
class FraudOnnx:
    """The fraud model behind BentoML's batchable API."""

    def __init__(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(os.environ["PEER_ONNX_MODEL"], sess_options=opts)

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=32, max_latency_ms=1000)
    def predict(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities of a batch of feature vectors."""
        _, probabilities = self.session.run(None, {"features": features.astype(np.float32)})
        return probabilities  # type: ignore[no-any-return]
