"""Small native models and held-out batches for the conversion tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from flows.native import NativeModel, SklearnModel
from flows.recipes.mlp import expected, mlp_onnx, mlp_schema
from services.registry.schema import ModelSchema, TensorSpec
from services.runner.feeds import Feeds


def classifier_schema(n: int) -> ModelSchema:
    """Three classes on ``n`` float features: a label and probabilities."""
    return ModelSchema(
        kind="tensor",
        inputs=[TensorSpec(name="features", datatype="FP32", shape=[-1, n])],
        outputs=[
            TensorSpec(name="label", datatype="INT64", shape=[-1]),
            TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 3]),
        ],
        labels=["a", "b", "c"],
        probability_output="probabilities",
    )


def sklearn_native() -> SklearnModel:
    """A gradient-boosted classifier trained on 1,000 rows, held out on 200."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import GradientBoostingClassifier

    x, y = make_classification(
        n_samples=1200, n_features=6, n_informative=4, n_classes=3, random_state=0
    )
    x = x.astype(np.float32)
    clf = GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0)
    clf.fit(x[:1000], y[:1000])
    return SklearnModel(
        clf, schema=classifier_schema(6), feeds={"features": x[1000:]}, metrics={"n_train": 1000}
    )


def softmax_schema() -> ModelSchema:
    """16 float features in, 4 class probabilities out."""
    return ModelSchema(
        kind="tensor",
        inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 16])],
        outputs=[TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 4])],
        labels=["w", "x", "y", "z"],
        probability_output="probabilities",
    )


def softmax_mlp() -> Any:
    """A seeded two-layer PyTorch classifier on ``softmax_schema()`` (needs torch)."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 4),
        torch.nn.Softmax(dim=1),
    ).eval()


def held_out(rows: int = 256, dim: int = 16) -> Feeds:
    """A seeded normal batch for ``x``."""
    return {"x": np.random.default_rng(1).normal(size=(rows, dim)).astype(np.float32)}


class GeneratedMLP(NativeModel):
    """A generated ONNX MLP (``flows.recipes.mlp``) posing as a native model: numpy is its
    framework, so conversion steps can be tested without torch."""

    framework = "numpy"

    def __init__(self, d_in: int = 16, hidden: int = 32, rows: int = 64) -> None:
        x = np.random.default_rng(2).normal(size=(rows, d_in)).astype(np.float32)
        super().__init__(None, schema=mlp_schema(d_in), feeds={"x": x}, task="regressor")
        self.d_in, self.hidden = d_in, hidden

    def predict(self, feeds: Feeds) -> Feeds:
        return {"y": expected(self.d_in, self.hidden, feeds["x"])}

    def export(self, opset: int) -> bytes:
        return mlp_onnx(self.d_in, self.hidden)
