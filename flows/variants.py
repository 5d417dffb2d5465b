"""Reduced-precision ONNX variants of a converted model: fp16 and dynamic int8."""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE


@task(cache_policy=NO_CACHE)
def build_variant(data: bytes, variant: str, *, reduce_range: bool) -> bytes:
    """An fp16 (inputs/outputs kept fp32) or dynamic int8 (per-channel) variant.

    Args:
        data: the fp32 ONNX model.
        variant: ``"fp16"`` or ``"int8"``.
        reduce_range: int8 weights in 7 bits (see ``ConvertSettings.int8_reduce_range``).
    """
    import onnx

    if variant == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load_from_string(data), keep_io_types=True)
        return model.SerializeToString()
    if variant == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(data)
            quantize_dynamic(
                src,
                dst,
                per_channel=True,
                reduce_range=reduce_range,
                weight_type=QuantType.QInt8,
            )
            return dst.read_bytes()
    raise ValueError(f"unknown variant {variant!r}")
