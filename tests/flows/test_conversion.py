"""The conversion flow under Prefect's test harness, registering into tmp_path registries."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.conversion import STEPS, convert_flow
from flows.native import TorchModel
from flows.parity import ParityError
from services.registry.schema import ModelSchema, TensorSpec
from services.registry.stores import LocalStore
from services.registry.versions import ModelRegistry
from services.runner.backends import OnnxRuntimeBackend
from services.runner.trt import unavailable_reason
from services.settings import ConvertSettings
from tests.flows.conversion_models import held_out, sklearn_native, softmax_mlp, softmax_schema

torch = pytest.importorskip("torch", reason="the convert extra (torch) is not installed")

FAST = ConvertSettings(latency_seconds=0.05, latency_batches=[1, 8, 32], ort_threads=1)


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(LocalStore(tmp_path / "store"))


class PerturbedExport(TorchModel):
    """A broken conversion: the exported graph's weights are not the native model's."""

    def export(self, opset: int) -> bytes:
        broken = copy.deepcopy(self.model)
        with torch.no_grad():
            for p in broken.parameters():
                p.add_(0.05 * torch.randn_like(p))
        return TorchModel(broken, schema=self.schema, feeds=self.feeds).export(opset)


class Upsampler(torch.nn.Module):
    """Bilinear upsampling: ONNX's Upsample (opset < 11) computes it differently."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(16, 16)

    def forward(self, x: Any) -> Any:
        h = self.lin(x).reshape(-1, 1, 4, 4)
        up = torch.nn.functional.interpolate(
            h, scale_factor=2.0, mode="bilinear", align_corners=False
        )
        return up.flatten(1)


def upsampler_schema() -> ModelSchema:
    return ModelSchema(
        kind="tensor",
        inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 16])],
        outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 64])],
    )


def test_sklearn_conversion_registers_a_parity_checked_version(registry: ModelRegistry) -> None:
    steps: list[str] = []
    report = convert_flow("gbt", sklearn_native(), registry, settings=FAST, progress=steps.append)

    assert steps == STEPS
    fp32 = report.parity["fp32"]
    assert fp32.passed and fp32.rows == 200
    assert fp32.max_abs_err <= 1e-4 and fp32.agreement is not None and fp32.agreement >= 0.995
    assert "ai.onnx.ml" in report.tensorrt["skipped"]
    assert sorted(report.latency["fp32"]) == [1, 8, 32]

    mv = registry.get("gbt")
    assert mv == report.registered and mv.version == "1" and mv.format == "onnx"
    assert mv.parity is not None and mv.parity["formats"]["fp32"]["passed"] is True
    assert mv.metrics["n_train"] == 1000
    assert set(mv.metrics["latency_ms"]["fp32"]) == {"1", "8", "32"}
    # what is registered is servable: run it through the runner's backend
    backend = OnnxRuntimeBackend(registry.load_artifact(mv), providers=["CPUExecutionProvider"])
    out = backend.run({"features": sklearn_native().feeds["features"][:5]})
    assert out["probabilities"].shape == (5, 3)


async def test_report_is_a_prefect_artifact(registry: ModelRegistry) -> None:
    convert_flow("gbt-art", sklearn_native(), registry, settings=FAST)
    async with get_client() as client:
        arts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["convert-gbt-art"]))
        )
    assert arts and "| fp32 |" in str(arts[0].data)


def test_torch_conversion_with_fp16_and_int8_variants(registry: ModelRegistry) -> None:
    settings = FAST.model_copy(update={"variants": ["fp16", "int8"], "serve_variant": "int8"})
    native = TorchModel(softmax_mlp(), schema=softmax_schema(), feeds=held_out())
    report = convert_flow("mlp", native, registry, settings=settings)

    assert set(report.parity) == {"fp32", "fp16", "int8"}
    assert report.parity["fp32"].max_abs_err <= 1e-4
    assert report.parity["fp16"].max_abs_err <= 1e-2
    assert report.parity["fp16"].agreement is not None and report.parity["fp16"].agreement >= 0.995
    assert all(p.passed for p in report.parity.values())
    assert set(report.latency) == {"fp32", "fp16", "int8"}
    mv = registry.get("mlp")
    assert mv.metrics["conversion"]["variant"] == "int8"
    import onnx

    graph = onnx.load_from_string(registry.load_artifact(mv)).graph
    assert any("Integer" in n.op_type or "Quant" in n.op_type for n in graph.node)


def test_dynamic_batch_axis(registry: ModelRegistry) -> None:
    native = TorchModel(softmax_mlp(), schema=softmax_schema(), feeds=held_out(rows=8))
    mv = convert_flow("mlp-dyn", native, registry, settings=FAST).registered
    assert mv is not None
    backend = OnnxRuntimeBackend(registry.load_artifact(mv), providers=["CPUExecutionProvider"])
    for rows in (1, 3, 50):
        x = held_out(rows)
        expected = native.predict(x)["probabilities"]
        np.testing.assert_allclose(backend.run(x)["probabilities"], expected, atol=1e-5)


def test_perturbed_weights_fail_parity_and_register_nothing(registry: ModelRegistry) -> None:
    native = PerturbedExport(softmax_mlp(), schema=softmax_schema(), feeds=held_out())
    with pytest.raises(ParityError) as err:
        convert_flow("broken", native, registry, settings=FAST)
    assert err.value.model == "broken"
    assert [f.format for f in err.value.failures] == ["fp32"]
    assert "parity failed, nothing registered" in err.value.message
    assert registry.list_models() == []


def test_wrong_opset_fails_parity_and_registers_nothing(registry: ModelRegistry) -> None:
    feeds = held_out()
    native = TorchModel(
        Upsampler().eval(), schema=upsampler_schema(), feeds=feeds, task="regressor"
    )
    with pytest.raises(ParityError, match="fp32"):
        convert_flow("upsample", native, registry, settings=FAST.model_copy(update={"opset": 9}))
    assert registry.list_models() == []
    # the same model at opset 17 converts
    report = convert_flow("upsample", native, registry, settings=FAST)
    assert report.parity["fp32"].passed and registry.list_models() == ["upsample"]


def test_opset_is_checked(registry: ModelRegistry) -> None:
    """The checker step refuses a graph newer than the opset asked for."""

    class OldOpset(TorchModel):
        def export(self, opset: int) -> bytes:
            return TorchModel(self.model, schema=self.schema, feeds=self.feeds).export(18)

    native = OldOpset(softmax_mlp(), schema=softmax_schema(), feeds=held_out())
    with pytest.raises(ValueError, match="opset 18, above the requested 17"):
        convert_flow("old", native, registry, settings=FAST)
    assert registry.list_models() == []


@pytest.mark.gpu
def test_tensorrt_engine_parity(registry: ModelRegistry) -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"TensorRT engine not buildable here: {reason}")
    settings = FAST.model_copy(update={"register_engine": True})
    native = TorchModel(softmax_mlp(), schema=softmax_schema(), feeds=held_out())
    report = convert_flow("mlp-trt", native, registry, settings=settings)
    assert report.tensorrt["built"] and report.parity["tensorrt"].passed
    assert report.engine_version is not None and report.engine_version.format == "tensorrt"


def test_tensorrt_skip_is_recorded_with_its_reason(registry: ModelRegistry) -> None:
    reason = unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT is present: the engine is built, not skipped")
    native = TorchModel(softmax_mlp(), schema=softmax_schema(), feeds=held_out())
    report = convert_flow("mlp-skip", native, registry, settings=FAST)
    assert report.tensorrt == {"built": False, "skipped": reason}
    assert registry.get("mlp-skip").parity["tensorrt"]["skipped"] == reason


def test_a_tabular_conversion_registers_its_reference_sample(registry: ModelRegistry) -> None:
    from monitoring.reference import ReferenceSample
    from services.registry.schema import FieldSpec

    native = sklearn_native()
    native.schema = native.schema.model_copy(
        update={
            "kind": "tabular",
            "fields": [FieldSpec(name=f"f{i}", dtype="float") for i in range(6)],
        }
    )
    many = np.random.default_rng(5).normal(size=(300, 6)).astype(np.float32)
    mv = convert_flow(
        "gbt-ref", native, registry, settings=FAST, reference_feeds={"features": many},
        reference_rows=250,
    ).registered  # fmt: skip
    assert mv is not None and mv.metrics["reference"]["rows"] == 250
    raw = registry.load_reference(mv)
    assert raw is not None
    sample = ReferenceSample.from_bytes(raw)
    assert sample.feature_names == tuple(f"f{i}" for i in range(6)) and sample.source == "convert"
    np.testing.assert_array_equal(sample.features, many[:250])
    served = OnnxRuntimeBackend(registry.load_artifact(mv), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        sample.outputs, served.run({"features": many[:250]})["probabilities"], atol=1e-6
    )
    # A raw tensor model is served over v2 infer, which is not logged: no sample.
    plain = convert_flow("gbt-plain", sklearn_native(), registry, settings=FAST).registered
    assert plain is not None and registry.load_reference(plain) is None
