"""The README's Kubernetes deployment: every manifest valid against the Kubernetes schemas
(offline, kubernetes-validate), and the pieces pointing at each other."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

README = Path(__file__).resolve().parents[2] / "README.md"
KUBERNETES = "1.29.0"


def manifests() -> list[dict[str, Any]]:
    """The YAML block of the README's Kubernetes section, one dict per document."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### Kubernetes", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert block is not None, "the Kubernetes section has no yaml block"
    return [doc for doc in yaml.safe_load_all(block.group(1)) if doc]


def by_kind(kind: str) -> dict[str, Any]:
    found = [m for m in manifests() if m["kind"] == kind]
    assert len(found) == 1, f"one {kind} expected"
    return found[0]


@pytest.mark.parametrize("manifest", manifests(), ids=lambda m: m["kind"])
def test_each_manifest_is_valid_against_the_kubernetes_schemas(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, KUBERNETES, strict=True)


def test_the_deployment_probes_ready_and_live_and_reads_config_and_secrets() -> None:
    container = by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert (
        container["envFrom"][0]["configMapRef"]["name"] == by_kind("ConfigMap")["metadata"]["name"]
    )
    secrets = {e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert secrets == {"WHATMATTERS_DATABASE_URL", "WHATMATTERS_REDIS_URL"}
    assert container["command"][:2] == ["whatmatters", "serve"]
    # the replicas do not migrate: the Job does, once
    assert by_kind("ConfigMap")["data"]["WHATMATTERS_AUTO_MIGRATE"] == "false"
    job = by_kind("Job")["spec"]["template"]["spec"]["containers"][0]
    assert job["command"] == ["whatmatters", "init-db"]


def test_service_budget_and_autoscaler_select_the_deployment() -> None:
    deployment = by_kind("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert by_kind("Service")["spec"]["selector"] == labels
    assert by_kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == labels
    target = by_kind("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert by_kind("PodDisruptionBudget")["spec"]["minAvailable"] < deployment["spec"]["replicas"]
