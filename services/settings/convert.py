"""Conversion settings: native -> ONNX -> variants -> TensorRT, and their parity gates."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConvertSettings(BaseSettings):
    """The conversion flow (native -> ONNX -> TensorRT), its parity gate and latency probe."""

    model_config = SettingsConfigDict(env_prefix="SERVEKIT_CONVERT_", extra="ignore")

    opset: int = Field(17, ge=7, le=23, description="ONNX opset of the export.")
    parity_rows: int = Field(256, ge=8, description="Rows of the held-out parity batch.")
    fp32_tolerance: float = Field(
        1e-4, gt=0, description="Most |onnx - native| per element (relative above 1) for fp32."
    )
    fp16_tolerance: float = Field(1e-2, gt=0, description="Same for fp16 and TensorRT fp16.")
    int8_tolerance: float = Field(1e-1, gt=0, description="Same for the dynamic int8 variant.")
    int8_reduce_range: bool = Field(
        True,
        description="Quantize int8 weights to 7 bits. CPUs without VNNI (AVX2 only) saturate "
        "u8 x s8 products of full-range weights (an MLP's top-1 agreement "
        "falls to about 99.2 %). Off only where every serving CPU has VNNI.",
    )
    min_agreement: float = Field(
        0.995, ge=0, le=1, description="Least label / top-1 agreement of every format."
    )
    variants: list[Literal["fp16", "int8"]] = Field(
        default_factory=list, description='Extra ONNX variants to build and check, e.g. ["int8"].'
    )
    serve_variant: Literal["fp32", "fp16", "int8"] = Field(
        "fp32", description="The ONNX variant registered as the served version."
    )
    tensorrt: bool = Field(
        True, description="Build a TensorRT fp16 engine where TensorRT and a CUDA GPU exist."
    )
    register_engine: bool = Field(
        False, description="Also register a built TensorRT engine as its own version."
    )
    trt_workspace_mb: int = Field(2048, ge=64, description="TensorRT builder workspace.")
    trt_max_batch: int = Field(64, ge=1, description="Largest batch of the engine's profile.")
    trt_max_sequence: int = Field(128, ge=1, description="Longest sequence of text profiles.")
    latency_batches: list[int] = Field(
        default_factory=lambda: [1, 8, 32], description="Batch sizes of the latency probe."
    )
    latency_seconds: float = Field(
        0.5, gt=0, description="Time spent timing each (format, batch size)."
    )
    ort_threads: int = Field(2, ge=1, le=64, description="ONNX Runtime threads while probing.")
