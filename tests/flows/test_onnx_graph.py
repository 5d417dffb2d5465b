"""The ONNX graph steps: the checker's opset ceiling and the portable optimization."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from flows.onnx_graph import check_onnx, export_onnx, optimize_onnx
from flows.recipes.mlp import expected, mlp_onnx
from services.runner.backends import OnnxRuntimeBackend
from tests.flows.conversion_models import GeneratedMLP


def test_export_is_the_native_models_graph() -> None:
    assert export_onnx(GeneratedMLP(d_in=8, hidden=4), 17) == mlp_onnx(8, 4)


def test_checker_refuses_an_opset_above_the_one_asked_for() -> None:
    data = mlp_onnx(8, 4)  # opset 17
    check_onnx(data, 17)
    check_onnx(data, 18)
    with pytest.raises(ValueError, match="opset 17, above the requested 16"):
        check_onnx(data, 16)


def test_optimized_graph_is_standard_onnx_with_the_same_outputs() -> None:
    optimized = optimize_onnx(mlp_onnx(8, 4))
    onnx.checker.check_model(onnx.load_from_string(optimized), full_check=True)
    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    backend = OnnxRuntimeBackend(optimized, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(backend.run({"x": x})["y"], expected(8, 4, x), rtol=1e-5)
