"""Native models: their outputs by the schema's names, their ONNX export, TensorRT shapes."""

from __future__ import annotations

import numpy as np
import pytest

from flows.native import TorchModel
from services.registry.schema import ModelSchema, TensorSpec
from services.runner.backends import OnnxRuntimeBackend
from tests.flows.conversion_models import held_out, sklearn_native, softmax_mlp, softmax_schema


def test_sklearn_outputs_and_export_use_the_schema_names() -> None:
    native = sklearn_native()
    out = native.predict(native.feeds)
    assert set(out) == {"label", "probabilities"} and native.primary_output == "probabilities"
    assert out["probabilities"].dtype == np.float32 and out["probabilities"].shape == (200, 3)
    backend = OnnxRuntimeBackend(native.export(17), providers=["CPUExecutionProvider"])
    onnx_out = backend.run(native.feeds)
    np.testing.assert_array_equal(onnx_out["label"], out["label"])
    np.testing.assert_allclose(onnx_out["probabilities"], out["probabilities"], atol=1e-5)


def test_torch_export_runs_with_any_batch() -> None:
    pytest.importorskip("torch", reason="the convert extra (torch) is not installed")
    native = TorchModel(softmax_mlp(), schema=softmax_schema(), feeds=held_out(rows=4))
    backend = OnnxRuntimeBackend(native.export(17), providers=["CPUExecutionProvider"])
    x = held_out(rows=9)
    np.testing.assert_allclose(
        backend.run(x)["probabilities"], native.predict(x)["probabilities"], atol=1e-5
    )


def test_tensorrt_profile_spans_batch_and_sequence() -> None:
    schema = ModelSchema(
        kind="tensor",
        inputs=[
            TensorSpec(name="ids", datatype="INT64", shape=[-1, -1]),
            TensorSpec(name="x", datatype="FP32", shape=[-1, 4]),
        ],
        outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 1])],
    )
    feeds = {"ids": np.zeros((12, 20), np.int64), "x": np.zeros((12, 4), np.float32)}
    native = TorchModel(None, schema=schema, feeds=feeds, dynamic_axes={"ids": {1: "sequence"}})
    profile = native.profile(max_batch=64, max_sequence=128)
    assert profile["ids"] == ((1, 1), (8, 20), (64, 128))
    assert profile["x"] == ((1, 4), (8, 4), (64, 4))
