"""The Kubernetes manifests (deploy/k8s): each overlay renders offline with ``kubectl
kustomize``, its core kinds pass kubernetes-validate (strict), its KEDA ScaledObject
KEDA's CRD schema, and what matters holds (probes, secrets as files, non-root, requests,
a GPU only in the gpu overlay)."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT
from tests.monitoring.test_autoscaling_manifests import K8S_VERSION, crd_validator

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
SERVING = ("servekit-gateway", "servekit-multimodel")
WORKLOADS = ("Deployment", "StatefulSet", "Job")
__all__ = ["crd_validator"]


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
            assert not names & {"SERVEKIT_REDIS_URL", "SERVEKIT_ADMIN_TOKEN"}
    secret = next(doc for doc in docs if doc["kind"] == "Secret")
    assert base64.b64decode(secret["data"]["redis-url"]) == b"redis://servekit-redis:6379/0"
    gateway = find(docs, "Deployment", "servekit-gateway")
    assert gateway is not None
    (container,) = containers(gateway)
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for name in ("SERVEKIT_REDIS_URL_FILE", "SERVEKIT_ADMIN_TOKEN_FILE"):
        assert str(Path(env[name]).parent) in mounts
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
