"""fp16 and int8 variants of a converted model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from flows.recipes.mlp import expected, mlp_onnx
from flows.variants import build_variant
from services.runner.backends import OnnxRuntimeBackend

X = np.random.default_rng(0).normal(size=(16, 32)).astype(np.float32)


def run(data: bytes) -> np.ndarray:
    backend = OnnxRuntimeBackend(data, providers=["CPUExecutionProvider"])
    return np.asarray(backend.run({"x": X})["y"])


def test_fp16_keeps_float32_inputs_and_outputs() -> None:
    data = build_variant.fn(mlp_onnx(32, 64), "fp16", reduce_range=True)
    graph = onnx.load_from_string(data).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    ref = expected(32, 64, X)
    np.testing.assert_allclose(run(data), ref, rtol=1e-2, atol=1e-2 * np.abs(ref).max())


def _has_vnni() -> bool:
    """Whether this CPU multiplies u8 x s8 without saturating (AVX-512 VNNI or AVX-VNNI)."""
    try:
        return "vnni" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("reduce_range", [True, False])
def test_int8_is_quantized_dynamically(reduce_range: bool) -> None:
    data = build_variant.fn(mlp_onnx(32, 64), "int8", reduce_range=reduce_range)
    ops = {n.op_type for n in onnx.load_from_string(data).graph.node}
    assert any("Integer" in op or "Quant" in op for op in ops)
    if not reduce_range and not _has_vnni():
        # Full-range weights saturate on CPUs without VNNI: why reduce_range is the default
        # (ConvertSettings.int8_reduce_range) and the conversion's parity check gates int8.
        pytest.skip("full-range int8 saturates on this CPU (no VNNI); 7-bit weights run")
    ref = expected(32, 64, X)
    assert np.abs(run(data) - ref).max() <= 0.1 * np.abs(ref).max()


def test_unknown_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown variant 'int4'"):
        build_variant.fn(mlp_onnx(4, 4), "int4", reduce_range=True)
