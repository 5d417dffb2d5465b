"""Each bundle serves from its own declared requirements: the built bento, exported with
its models, served by `bentoml serve` from a venv holding only the bento's requirements,
away from the checkout, against the test Redis."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.deploy.conftest import declared_envs, declared_venv, export_bento
from tests.deploy.serving_checks import check_metrics, check_oip_infer, check_predict, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


class BentoServer:
    """`bentoml serve` of an exported bento with another venv's Python, in a subprocess."""

    def __init__(self, python: Path, bento: Path, env: dict[str, str], workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "serve.log"
        # Nothing of the checkout or the test venv: no PYTHONPATH, a working dir of its own.
        base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        self.proc = subprocess.Popen(
            [str(python), "-m", "bentoml", "serve", str(bento),
             "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=workdir, env={**base, **env}, stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            wait_ready(self.url, lambda: self.proc.poll() is None, self.log.read_text, 120)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(params=["servekit", "servekit-multimodel"])
def served_bundle(
    request: pytest.FixtureRequest,
    built_bentos: dict[str, str],
    fraud_store: Path,
    serving_redis_url: str,
    tmp_path: Path,
) -> Iterator[BentoServer]:
    """One bundle served from its declared requirements."""
    bento = export_bento(built_bentos[request.param], tmp_path)
    venv = declared_venv(bento / "env" / "python" / "requirements.txt")
    env = {
        **declared_envs(bento),
        # An empty BentoML home: the models come from the bento or the model store only.
        "BENTOML_HOME": str(tmp_path / "bentoml-home"),
        "SERVEKIT_REDIS_URL": serving_redis_url,
        "SERVEKIT_REDIS_EMBEDDED_DIR": str(tmp_path / "redis"),
    }
    if request.param == "servekit-multimodel":
        env["SERVEKIT_MODEL_STORE"] = str(fraud_store)  # its deployments mount a registry
    workdir = tmp_path / "run"
    workdir.mkdir()
    server = BentoServer(venv / "bin" / "python", bento, env, workdir)
    yield server
    server.stop()


def test_bundle_serves_from_declared_requirements(served_bundle: BentoServer) -> None:
    check_predict(served_bundle.url)
    check_oip_infer(served_bundle.url)
    check_metrics(served_bundle.url)
