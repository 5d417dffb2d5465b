"""The gateway's OCI image: built with buildah from the local base (reused when built),
run with podman (runc) beside the test Redis, answering /predict, an OIP v2 infer through
tritonclient and /metrics; non-root, with a HEALTHCHECK, settings from the environment
and the Redis URL from a mounted secret file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis

from tests.conftest import ROOT, free_port
from tests.deploy.serving_checks import (
    GOOD,
    check_metrics,
    check_oip_infer,
    check_predict,
    run,
    wait_ready,
)

pytestmark = [pytest.mark.slow, pytest.mark.image, pytest.mark.timeout(1800)]

CONTAINERS_CONF = ROOT / "deploy" / "image" / "containers.conf"
MAX_SERVING_BYTES = 600 * 10**6
# podman's slirp4netns network reaches the host's loopback at this address.
HOST_LOOPBACK = "10.0.2.2"
PODMAN_ENV = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


@dataclass
class BuiltImage:
    ref: str
    archive: Path
    log: str


def podman(*args: str, timeout: float = 120) -> str:
    """podman with servekit's containers.conf (runc, bounded ulimits)."""
    return run(["podman", *args], timeout=timeout, env=PODMAN_ENV)


@pytest.fixture(scope="module")
def gateway_image(
    built_bentos: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BuiltImage]:
    """deploy/image/build.sh gateway on the bento this test run built."""
    missing = [t for t in ("buildah", "podman", "skopeo", "debootstrap") if not shutil.which(t)]
    if missing:
        pytest.skip(f"image tools missing: {', '.join(missing)} (.ci/run installs them)")
    if os.geteuid() != 0:
        pytest.skip("the image recipe runs rootful buildah/podman and debootstrap")
    work = tmp_path_factory.mktemp("image")
    tag = built_bentos["servekit"]
    env = {
        **PODMAN_ENV,
        "PYTHON": sys.executable,
        "WORK": str(work / "ctx"),
        "IMAGE_DIR": str(work / "out"),
        "GATEWAY_BENTO": tag,
        "LATEST": "0",
    }
    out = subprocess.run(
        ["bash", "deploy/image/build.sh", "gateway"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-3000:]
    ref = f"localhost/servekit-gateway:{tag.split(':')[1]}"
    yield BuiltImage(ref, work / "out" / "servekit-gateway.oci.tar", out.stdout)
    subprocess.run(["podman", "rmi", ref], capture_output=True, timeout=120, env=PODMAN_ENV)


def container_log(name: str) -> str:
    """The container's output (BentoML logs to stderr)."""
    return subprocess.run(
        ["podman", "logs", name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=60, env=PODMAN_ENV,
    ).stdout  # fmt: skip


def container_redis_url(url: str) -> str:
    """The test Redis as the container sees it (a loopback host becomes the host's)."""
    parts = urlsplit(url)
    if parts.hostname in ("127.0.0.1", "localhost", "::1"):
        parts = parts._replace(netloc=f"{HOST_LOOPBACK}:{parts.port or 6379}")
    return urlunsplit(parts)


@dataclass
class Container:
    name: str
    url: str


@pytest.fixture(scope="module")
def gateway_container(
    gateway_image: BuiltImage,
    serving_redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Container]:
    """The image running with podman on 127.0.0.1:PORT; Redis URL from a secret file."""
    secrets = tmp_path_factory.mktemp("secrets")
    (secrets / "redis-url").write_text(container_redis_url(serving_redis_url) + "\n")
    secrets.chmod(0o755)
    (secrets / "redis-url").chmod(0o644)  # the image's user is not root
    name = f"servekit-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    podman(
        "run", "-d", "--name", name, "--runtime", "runc",
        "--network", "slirp4netns:allow_host_loopback=true",
        "-p", f"127.0.0.1:{port}:3000",
        "-v", f"{secrets / 'redis-url'}:/run/secrets/redis-url:ro",
        "-e", "SERVEKIT_REDIS_URL_FILE=/run/secrets/redis-url",
        "-e", "SERVEKIT_MAX_RECORDS=4",
        "--health-interval", "disable",
        gateway_image.ref,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"

        def alive() -> bool:
            state = podman("inspect", "-f", "{{.State.Running}}", name).strip()
            return state == "true"

        wait_ready(url, alive, lambda: container_log(name), 120)
        yield Container(name, url)
    finally:
        subprocess.run(
            ["podman", "rm", "-f", "-t", "5", name], capture_output=True, timeout=60, env=PODMAN_ENV
        )


def test_image_serves_predict_oip_and_metrics(
    gateway_container: Container, serving_redis_url: str
) -> None:
    ready = httpx.get(f"{gateway_container.url}/v2/health/ready", timeout=5).json()
    assert ready["ready"] is True and ready.get("redis") == "ok", ready
    check_predict(gateway_container.url, user_id="image-test")
    check_oip_infer(gateway_container.url)
    check_metrics(gateway_container.url)
    # The container used the host's test Redis (from the secret file): the cache wrote there.
    assert redis.Redis.from_url(serving_redis_url).keys("servekit:pred:fraud:*")


def test_image_takes_settings_from_the_environment(gateway_container: Container) -> None:
    resp = httpx.post(
        f"{gateway_container.url}/predict",
        json={"model": "fraud", "inputs": [GOOD] * 5},
        timeout=10,
    )
    assert resp.status_code == 413 and resp.json()["limit"] == 4, resp.text


def test_image_runs_as_non_root_with_a_healthcheck(
    gateway_image: BuiltImage, gateway_container: Container
) -> None:
    inspected = json.loads(podman("image", "inspect", gateway_image.ref))[0]
    assert inspected["Config"]["User"] == "servekit"
    assert inspected["Healthcheck"]["Test"] == ["CMD", "/opt/servekit/entrypoint.sh", "health"]
    assert podman("exec", gateway_container.name, "id", "-u").strip() != "0"
    assert "SERVEKIT_REDIS_URL=" not in podman(
        "inspect", "-f", "{{.Config.Env}}", gateway_container.name
    )
    podman("healthcheck", "run", gateway_container.name)


def test_image_reads_s3_credentials_from_a_mounted_file(
    gateway_image: BuiltImage, tmp_path: Path
) -> None:
    creds = tmp_path / "credentials"
    creds.write_text("[default]\naws_access_key_id = AKIDSERVEKIT\naws_secret_access_key = x\n")
    creds.chmod(0o644)
    probe = "import boto3; print(boto3.Session().get_credentials().access_key)"
    key = podman(
        "run", "--rm", "--runtime", "runc", "--health-interval", "disable",
        "-v", f"{creds}:/run/secrets/aws/credentials:ro",
        gateway_image.ref, "python", "-c", probe,
    )  # fmt: skip
    assert key.strip() == "AKIDSERVEKIT"


def test_image_is_lean_and_exported(gateway_image: BuiltImage) -> None:
    size = int(podman("image", "inspect", "-f", "{{.Size}}", gateway_image.ref))
    assert size <= MAX_SERVING_BYTES, f"{size / 1e6:.0f} MB"
    probe = (
        "import importlib.util as u, shutil; "
        "print([m for m in ('torch', 'evidently', 'sklearn', 'prefect') if u.find_spec(m)]"
        " + [c for c in ('gcc', 'cc', 'g++') if shutil.which(c)])"
    )
    found = podman(
        "run", "--rm", "--runtime", "runc", "--health-interval", "disable",
        gateway_image.ref, "python", "-c", probe,
    )  # fmt: skip
    assert found.strip() == "[]"
    digest = run(
        ["skopeo", "inspect", "--format", "{{.Digest}}", f"oci-archive:{gateway_image.archive}"]
    )
    assert digest.startswith("sha256:")
    assert "digest sha256:" in gateway_image.log and "uncompressed" in gateway_image.log
