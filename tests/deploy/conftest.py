"""Fixtures of the deployment tests: both bundles built with `bentoml build`, exported with
their models as a container would hold them, and venvs made from what a bento declares."""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from services.registry.stores import LocalStore
from services.registry.versions import ModelRegistry
from tests.conftest import ROOT

BUNDLES = {
    "servekit": "bentofile.yaml",
    "servekit-multimodel": "bentos/multimodel/bentofile.yaml",
}
VENVS = ROOT / ".servekit" / "venvs"


def build_bento(bentofile: str) -> str:
    """`bentoml build` of one bundle from the checkout; its tag."""
    out = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", bentofile, "--output", "tag", "."],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")


@pytest.fixture(scope="session")
def built_bentos(fraud_store: Path) -> Iterator[dict[str, str]]:
    """Both bundles built (the fraud model exported to BentoML's store first): name -> tag."""
    import bentoml

    ModelRegistry(LocalStore(fraud_store)).export_to_bentoml("fraud")
    tags = {name: build_bento(bentofile) for name, bentofile in BUNDLES.items()}
    yield tags
    for tag in tags.values():
        bentoml.delete(tag)


def export_bento(tag: str, dest: Path) -> Path:
    """The bento with its models, unpacked under ``dest`` (what an image holds)."""
    import bentoml

    archive = dest / "bento.tar"
    bentoml.export_bento(tag, str(archive), output_format="tar")
    folder = dest / "bento"
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    archive.unlink()
    return folder


def declared_envs(bento: Path) -> dict[str, str]:
    """The envs the bento declares (bento.yaml), as its container image sets them."""
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    return {env["name"]: str(env.get("value", "")) for env in info.get("envs") or []}


def declared_venv(requirements: Path) -> Path:
    """A venv holding only ``requirements`` (pip install -r), kept per content hash.

    Creation takes about a minute with pip's cache warm; a later test run reuses the venv.
    A lock keeps two test runs from building the same one at once.
    """
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    venv = VENVS / f"bento-{digest}"
    VENVS.mkdir(parents=True, exist_ok=True)
    with (VENVS / f"bento-{digest}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / ".complete").exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        out = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "-r", str(requirements)],
            capture_output=True, text=True, timeout=1200,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        (venv / ".complete").touch()
    return venv
