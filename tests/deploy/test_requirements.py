"""The images' and bundles' requirement files: pinned to constraints.txt, serving-only."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

REQUIREMENT = re.compile(r"^([A-Za-z0-9_.\-]+)(?:==(\S+))?$")


def requirements(path: Path) -> dict[str, str | None]:
    """name -> pinned version (None when unpinned) of each requirement line, names
    normalized as pip does; options (-r, -c) and comments are skipped."""
    found: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        m = REQUIREMENT.match(line.strip())
        if m:
            found[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return found


def pins(path: Path) -> dict[str, str]:
    return {n: v for n, v in requirements(path).items() if v is not None}


def test_bento_requirements_are_pinned_to_constraints() -> None:
    """The bento declares its own pins (its image and venv get no constraints file)."""
    constraints = pins(ROOT / "constraints.txt")
    declared = requirements(ROOT / "requirements" / "bento.txt")
    assert declared and None not in declared.values()
    assert {n: v for n, v in declared.items() if constraints.get(n) != v} == {}


@pytest.mark.parametrize("name", ["flows.txt", "gpu.txt"])
def test_image_requirements_are_pinned_by_constraints(name: str) -> None:
    """flows.txt and gpu.txt name packages; constraints.txt holds every version."""
    constraints = pins(ROOT / "constraints.txt")
    declared = requirements(ROOT / "requirements" / name)
    assert declared
    assert [
        n for n, v in declared.items() if n not in constraints or v not in (None, constraints[n])
    ] == []


def test_kserve_client_requirements_are_pinned_to_constraints() -> None:
    """KServe's client is installed with --no-deps (no resolver): every line pins a version."""
    constraints = pins(ROOT / "constraints.txt")
    declared = requirements(ROOT / "requirements" / "kserve-client.txt")
    assert declared.get("kserve") and None not in declared.values()
    assert {n: v for n, v in declared.items() if constraints.get(n) != v} == {}


def test_kserve_client_requirements_shadow_nothing_servekit_installs() -> None:
    """Its directory goes on PYTHONPATH, ahead of the venv: a package the venv also holds
    would replace servekit's version in the client's interpreter."""

    def installed(name: str) -> bool:
        try:
            version(name)
        except PackageNotFoundError:
            return False
        return True

    declared = requirements(ROOT / "requirements" / "kserve-client.txt")
    assert [n for n in declared if installed(n)] == []


def test_serving_requirements_hold_no_training_stack() -> None:
    declared = set(pins(ROOT / "requirements" / "bento.txt"))
    assert not declared & {"torch", "evidently", "prefect", "scikit-learn", "transformers", "scipy"}
    assert {"bentoml", "onnxruntime", "redis", "tokenizers"} <= declared


def test_flows_requirements_extend_the_serving_ones_without_torch() -> None:
    text = (ROOT / "requirements" / "flows.txt").read_text()
    assert "-r bento.txt" in text.splitlines()
    assert "torch" not in requirements(ROOT / "requirements" / "flows.txt")


@pytest.mark.parametrize("bentofile", ["bentofile.yaml", "bentos/multimodel/bentofile.yaml"])
def test_bundles_declare_the_serving_requirements(bentofile: str) -> None:
    config = yaml.safe_load((ROOT / bentofile).read_text())
    assert config["python"]["requirements_txt"] == "./requirements/bento.txt"
    assert config["service"] == "services.service:Gateway"
