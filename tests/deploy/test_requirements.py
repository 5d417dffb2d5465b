"""The images' and bundles' requirement files: pinned to constraints.txt, serving-only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==(\S+)$")


def pins(path: Path) -> dict[str, str]:
    """name -> version of every ``name==version`` line (names normalized as pip does)."""
    found = {}
    for line in path.read_text().splitlines():
        m = PIN.match(line.strip())
        if m:
            found[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return found


@pytest.mark.parametrize("name", ["bento.txt", "flows.txt", "gpu.txt"])
def test_requirements_are_pinned_to_constraints(name: str) -> None:
    constraints = pins(ROOT / "constraints.txt")
    declared = pins(ROOT / "requirements" / name)
    assert declared
    assert {n: v for n, v in declared.items() if constraints.get(n) != v} == {}


def test_serving_requirements_hold_no_training_stack() -> None:
    declared = set(pins(ROOT / "requirements" / "bento.txt"))
    assert not declared & {"torch", "evidently", "prefect", "scikit-learn", "transformers", "scipy"}
    assert {"bentoml", "onnxruntime", "redis", "tokenizers"} <= declared


def test_flows_requirements_extend_the_serving_ones_without_torch() -> None:
    text = (ROOT / "requirements" / "flows.txt").read_text()
    assert "-r bento.txt" in text.splitlines()
    assert "torch" not in pins(ROOT / "requirements" / "flows.txt")


@pytest.mark.parametrize("bentofile", ["bentofile.yaml", "bentos/multimodel/bentofile.yaml"])
def test_bundles_declare_the_serving_requirements(bentofile: str) -> None:
    config = yaml.safe_load((ROOT / bentofile).read_text())
    assert config["python"]["requirements_txt"] == "./requirements/bento.txt"
    assert config["service"] == "services.service:Gateway"
