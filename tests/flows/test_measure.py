"""Parity and latency of each converted format, through the serving backends."""

from __future__ import annotations

from flows.measure import check_parity, measure_latency, run_native, tolerance
from flows.recipes.mlp import mlp_onnx
from flows.variants import build_variant
from services.settings import ConvertSettings
from tests.flows.conversion_models import GeneratedMLP

FAST = ConvertSettings(latency_seconds=0.01, latency_batches=[1, 4], ort_threads=1)


def test_each_format_has_its_tolerance() -> None:
    s = ConvertSettings(fp32_tolerance=1e-5, fp16_tolerance=1e-3, int8_tolerance=1e-1)
    got = [tolerance(f, s) for f in ("fp32", "fp16", "int8", "tensorrt")]
    assert got == [1e-5, 1e-3, 1e-1, 1e-3]


def test_parity_of_the_served_graph_against_the_native_outputs() -> None:
    native = GeneratedMLP(d_in=16, hidden=32)
    reference = run_native(native)
    data = mlp_onnx(16, 32)
    fp32 = check_parity("fp32", data, native, reference, FAST)
    assert fp32.passed and fp32.rows == 64 and fp32.agreement is None
    fp16 = build_variant.fn(data, "fp16", reduce_range=True)
    strict = FAST.model_copy(update={"fp16_tolerance": 1e-9})
    result = check_parity("fp16", fp16, native, reference, strict)
    assert not result.passed and result.tolerance == 1e-9


def test_latency_per_batch_size() -> None:
    native = GeneratedMLP(d_in=16, hidden=32, rows=3)
    out = measure_latency("fp32", mlp_onnx(16, 32), native.feeds, FAST)
    assert sorted(out) == [1, 4]
    for per in out.values():
        assert per["runs"] >= 3 and 0 < per["p50_ms"] <= per["p90_ms"] and per["rows_per_s"] > 0
