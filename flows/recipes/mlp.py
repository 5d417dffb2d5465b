"""Generated MLP models (``onnx.helper``): fast, deterministic, of any size.

The multi-model benchmark and the tests register hundreds of these to exercise the pool.

``x[-1, d_in] -> MatMul(W) -> Add(b) -> MatMul(W2) -> y[-1, 2]``, float32. The weights
(``d_in * hidden + hidden + 2 * hidden`` floats) set the session's size.
"""

from __future__ import annotations

import numpy as np

from services.registry.schema import ModelSchema, TensorSpec
from services.registry.versions import ModelRegistry, ModelVersion


def mlp_onnx(d_in: int, hidden: int, *, seed: int = 0) -> bytes:
    """A serialized two-layer linear model with random weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((d_in, hidden)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "B")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, 2)).astype(np.float32), "W2")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Add", ["h", "B"], ["a"]),
            helper.make_node("MatMul", ["a", "W2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, d_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
        [w, b, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return bytes(model.SerializeToString())


def mlp_schema(d_in: int) -> ModelSchema:
    """The tensor schema of ``mlp_onnx(d_in, ...)``."""
    return ModelSchema(
        kind="tensor",
        inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, d_in])],
        outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 2])],
    )


def register_mlp(
    registry: ModelRegistry, name: str, d_in: int, hidden: int, *, seed: int = 0
) -> ModelVersion:
    """Register ``mlp_onnx(d_in, hidden)`` as a new version of ``name``."""
    return registry.register(name, mlp_onnx(d_in, hidden, seed=seed), schema=mlp_schema(d_in))


def expected(d_in: int, hidden: int, x: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """What the model returns for ``x`` (numpy reference)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((d_in, hidden)).astype(np.float32)
    b = rng.standard_normal(hidden).astype(np.float32)
    w2 = rng.standard_normal((hidden, 2)).astype(np.float32)
    return np.asarray((x @ w + b) @ w2, dtype=np.float32)
