"""Deployment files: Kubernetes manifests valid against the API schema (kubernetes-validate, strict),
probes on the gRPC health service, a GPU variant, and serving images without torch that run as non-root."""
from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = "1.30"


def documents(name: str) -> list[dict]:
    return list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / name).read_text()))


@pytest.mark.parametrize("name", ["metalearn.yaml", "metalearn-gpu.yaml"])
def test_manifests_match_the_kubernetes_schema(name):
    for document in documents(name):
        kubernetes_validate.validate(document, KUBERNETES, strict=True)


def test_the_schema_check_catches_mistakes():
    deployment = copy.deepcopy(documents("metalearn.yaml")[0])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_deployment_wiring():
    by_kind = {d["kind"]: d for d in documents("metalearn.yaml")}
    deployment = by_kind["Deployment"]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["grpc"]["port"] == 50051 and container["livenessProbe"]["grpc"]
    assert container["resources"]["requests"]["cpu"] and pod["spec"]["securityContext"]["runAsNonRoot"]
    labels = pod["metadata"]["labels"]
    for selector in (by_kind["Service"]["spec"]["selector"], by_kind["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    assert by_kind["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    gpu = documents("metalearn-gpu.yaml")[0]["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "METALEARN_PROVIDERS", "value": "CUDAExecutionProvider,CPUExecutionProvider"} in gpu["env"]


@pytest.mark.parametrize("dockerfile, runtime", [("Dockerfile", "onnxruntime"), ("Dockerfile.gpu", "onnxruntime-gpu")])
def test_serving_images(dockerfile, runtime):
    text = (ROOT / dockerfile).read_text()
    stages = text.count("\nFROM ") + text.startswith("FROM ")
    assert stages >= 2  # multi-stage: build tools stay out of the image
    assert "USER metalearn" in text and "HEALTHCHECK" in text
    instructions = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert not any("torch" in line for line in instructions) and "metalearn-server" in text
    assert (runtime == "onnxruntime") or "onnxruntime-gpu" in text
