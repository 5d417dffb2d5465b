"""`bentoml build` of the root bentofile.yaml packs the gateway and the fraud model."""

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
