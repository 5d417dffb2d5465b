"""`bentoml build` of both bundles: the root bentofile.yaml packs the gateway and the fraud
model; bentos/multimodel packs the gateway alone, its models coming from a registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.registry.stores import LocalStore
from services.registry.versions import ModelRegistry
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_bentoml_build(fraud_store: Path) -> None:
    import bentoml

    ModelRegistry(LocalStore(fraud_store)).export_to_bentoml("fraud")
    out = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    bento = bentoml.get(tag)
    assert bento.tag.name == "servekit"
    assert [m.tag.name for m in bento.info.models] == ["servekit-fraud"]
    src = Path(bento.path) / "src"
    assert (src / "services" / "service.py").exists()
    assert not (src / "tests").exists()
    bentoml.delete(tag)


def test_multimodel_bentoml_build() -> None:
    import bentoml

    out = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", "bentos/multimodel/bentofile.yaml",
         "--output", "tag", "."],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    bento = bentoml.get(tag)
    assert bento.tag.name == "servekit-multimodel"
    assert list(bento.info.models) == []  # models come from the mounted registry
    envs = {env.name: env.value for env in bento.info.envs}
    assert envs["SERVEKIT_MODELS"] == "[]" and envs["SERVEKIT_MODEL_STORE"] == "/models"
    requirements = (Path(bento.path) / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime==" in requirements and "torch" not in requirements
    bentoml.delete(tag)
