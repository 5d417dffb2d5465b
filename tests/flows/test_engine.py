"""The TensorRT step: why an engine is skipped, recorded instead of failing the run."""

from __future__ import annotations

from flows.engine import build_tensorrt, skip_reason
from flows.native import TorchModel
from services.runner.trt import unavailable_reason
from services.settings import ConvertSettings
from tests.flows.conversion_models import held_out, sklearn_native, softmax_schema


def test_skip_reasons() -> None:
    torch_native = TorchModel(None, schema=softmax_schema(), feeds=held_out(rows=4))
    off = ConvertSettings(tensorrt=False)
    assert skip_reason(torch_native, off) == "disabled (SERVEKIT_CONVERT_TENSORRT=false)"
    on = ConvertSettings(tensorrt=True)
    assert "ai.onnx.ml operators" in (skip_reason(sklearn_native(), on) or "")
    assert skip_reason(torch_native, on) == unavailable_reason()


def test_a_skipped_engine_is_its_reason() -> None:
    native = sklearn_native()
    settings = ConvertSettings(tensorrt=False)
    assert build_tensorrt(b"", native, settings) == skip_reason(native, settings)
