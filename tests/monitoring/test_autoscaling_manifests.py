"""The autoscaling kustomize Component: it renders onto stub Deployments, the HPA passes
kubernetes-validate (strict), the ScaledObject KEDA's CRD schema, and its numbers are the
policy's."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from monitoring.autoscale import PolicySpec

ROOT = Path(__file__).resolve().parents[2]
COMPONENT = ROOT / "deploy" / "k8s" / "components" / "autoscaling"
CRD_SCHEMA = ROOT / "tests" / "fixtures" / "keda_scaledobject_schema.json"
K8S_VERSION = "1.32"

STUBS = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: servekit-gateway}
spec:
  selector: {matchLabels: {app: gateway}}
  template:
    metadata: {labels: {app: gateway}}
    spec: {containers: [{name: gateway, image: "servekit:test"}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: servekit-runner}
spec:
  selector: {matchLabels: {app: runner}}
  template:
    metadata: {labels: {app: runner}}
    spec: {containers: [{name: runner, image: "servekit:test"}]}
"""


def render(tmp_path: Path, extra: str = "") -> dict[str, dict[str, Any]]:
    """``kubectl kustomize`` of stub Deployments plus the Component; docs by kind."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found: it renders kustomizations offline")
    (tmp_path / "deployments.yaml").write_text(STUBS)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [deployments.yaml]\ncomponents: [{os.path.relpath(COMPONENT, tmp_path)}]\n"
        + extra
    )
    out = subprocess.run(
        [kubectl, "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    docs: dict[str, dict[str, Any]] = {}
    for doc in yaml.safe_load_all(out.stdout):
        docs[doc["kind"] if doc["kind"] != "Deployment" else doc["metadata"]["name"]] = doc
    return docs


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return render(tmp_path_factory.mktemp("kustomize"))


def test_the_component_is_a_component() -> None:
    doc = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("kustomize.config.k8s.io/v1alpha1", "Component")


def test_it_targets_the_runner_and_the_gateway(rendered: dict[str, dict[str, Any]]) -> None:
    assert set(rendered) == {
        "servekit-gateway",
        "servekit-runner",
        "ScaledObject",
        "HorizontalPodAutoscaler",
    }
    assert rendered["ScaledObject"]["spec"]["scaleTargetRef"]["name"] == "servekit-runner"
    hpa_target = rendered["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (hpa_target["kind"], hpa_target["name"]) == ("Deployment", "servekit-gateway")


def test_targets_follow_a_name_prefix_and_namespace(tmp_path: Path) -> None:
    docs = render(tmp_path, "namespace: ml\nnamePrefix: prod-\n")
    assert docs["ScaledObject"]["spec"]["scaleTargetRef"]["name"] == "prod-servekit-runner"
    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "prod-servekit-gateway"
    assert docs["ScaledObject"]["metadata"]["namespace"] == hpa["metadata"]["namespace"] == "ml"
    gpu = _triggers(docs["ScaledObject"])["gpu"]["metadata"]["query"]
    pattern = re.search(r'pod=~"([^"]+)"', gpu)
    assert pattern is not None
    for pod in ("prod-servekit-runner-7d9f8c6b4-x2x9z", "servekit-runner-7d9f8c6b4-x2x9z"):
        assert re.fullmatch(pattern.group(1), pod)
    assert not re.fullmatch(pattern.group(1), "servekit-gateway-7d9f8c6b4-x2x9z")


def test_hpa_is_valid_autoscaling_v2(rendered: dict[str, dict[str, Any]]) -> None:
    hpa = rendered["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)
    behavior = hpa["spec"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0


def test_strict_validation_catches_a_mistyped_hpa(rendered: dict[str, dict[str, Any]]) -> None:
    hpa = copy.deepcopy(rendered["HorizontalPodAutoscaler"])
    hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] = "300"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused (as kubectl's strict field validation)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def crd_validator() -> jsonschema.Draft7Validator:
    schema = _strict(json.loads(CRD_SCHEMA.read_text()))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_scaledobject_matches_kedas_crd(
    rendered: dict[str, dict[str, Any]], crd_validator: jsonschema.Draft7Validator
) -> None:
    so = rendered["ScaledObject"]
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    errors = [f"{list(e.path)}: {e.message}" for e in crd_validator.iter_errors(so)]
    assert not errors


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "fallback", "behaviour"), "scalingModifiers"),  # misspelt field
        (("spec", "fallback", "behavior"), "scalingModifier"),  # not in the enum
        (("spec", "triggers", 0, "metadata", "threshold"), 80),  # metadata holds strings
        (("spec", "advanced", "scalingModifiers", "metricType"), "Utilization"),
    ],
)
def test_crd_schema_catches_mistakes(
    rendered: dict[str, dict[str, Any]],
    crd_validator: jsonschema.Draft7Validator,
    path: tuple[Any, ...],
    value: Any,
) -> None:
    so = copy.deepcopy(rendered["ScaledObject"])
    node = so
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert list(crd_validator.iter_errors(so))


def _triggers(so: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in so["spec"]["triggers"]}


def test_scaledobject_encodes_the_policy(rendered: dict[str, dict[str, Any]]) -> None:
    so, spec = rendered["ScaledObject"]["spec"], PolicySpec()
    triggers = _triggers(rendered["ScaledObject"])
    assert set(triggers) == {"gpu", "inference", "concurrency"}
    for t in triggers.values():
        assert t["type"] == "prometheus"
        # an empty answer must count as a failure, or a missing GPU metric reads as idle
        assert t["metadata"]["ignoreNullValues"] == "false"
    assert "avg_over_time(DCGM_FI_DEV_GPU_UTIL" in triggers["gpu"]["metadata"]["query"]
    assert "[5m]" in triggers["gpu"]["metadata"]["query"]
    modifiers = so["advanced"]["scalingModifiers"]
    assert float(modifiers["target"]) == spec.target_percent
    assert modifiers["metricType"] == "AverageValue"
    formula = modifiers["formula"]
    assert f"inference * 100 / {spec.replica_capacity:g}" in formula
    assert f"* {spec.target_percent:g} / {spec.concurrency_target:g}" in formula
    assert set(re.findall(r"[a-z_]+", formula)) - {"nil", "max"} == set(triggers)
    assert so["fallback"]["behavior"] == "scalingModifiers"
    behavior = so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == spec.scale_down_stabilization_s
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == spec.scale_up_stabilization_s
    ups = {(p["type"], p["value"], p["periodSeconds"]) for p in behavior["scaleUp"]["policies"]}
    assert ups == {(r.kind, r.value, r.period_s) for r in spec.scale_up}
