"""The Kubernetes manifests: valid against the API schemas (strict: an unknown or
misplaced field fails instead of being dropped by the API server), and consistent with
each other and with the code (probes on the port the worker serves, selectors that
match the pods, settings the pipeline reads)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from pipeline.settings import load as load_settings
from pipeline.web import OPEN_PATHS
from tests.deploy.common import K8S_DIR, load_yaml, setting_names

# The oldest Kubernetes still commonly run and the newest the validator ships.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
SECRET_SETTINGS = {"PIPELINE_REDIS_URL", "PIPELINE_HTTP_TOKEN", "PIPELINE_KAFKA_PASSWORD"}
KUSTOMIZATION = K8S_DIR / "kustomization.yaml"


def _docs() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S_DIR.glob("*.yaml")) if path != KUSTOMIZATION
            for doc in yaml.safe_load_all(path.read_text()) if doc]


DOCS = _docs()


def _one(kind: str) -> dict[str, Any]:
    [doc] = [d for d in DOCS if d["kind"] == kind]
    return doc


def _container() -> dict[str, Any]:
    [container] = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _data(kind: str) -> dict[str, str]:
    doc = _one(kind)
    return {**doc.get("data", {}), **doc.get("stringData", {})}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("doc", DOCS, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_is_valid(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_kustomization_lists_every_manifest_in_one_namespace() -> None:
    kustomization = load_yaml(KUSTOMIZATION)
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S_DIR.glob("*.yaml") if p != KUSTOMIZATION)
    namespace = _one("Namespace")["metadata"]["name"]
    assert kustomization["namespace"] == namespace
    for doc in DOCS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]
    assert {d["kind"] for d in DOCS} == {
        "Namespace", "ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget"}


def test_probes_hit_open_worker_endpoints_on_the_port_the_worker_serves() -> None:
    container = _container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    web_port = int(_data("ConfigMap")["PIPELINE_WEB_PORT"])
    assert ports == {"http": web_port}
    # Ready (and started) when processing; restarted only when wedged, not while restoring.
    for probe, path in (("readinessProbe", "/health"), ("startupProbe", "/health"), ("livenessProbe", "/live")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and path in OPEN_PATHS, probe
        assert ports.get(get["port"], get["port"]) == web_port, probe
    annotations = _one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == web_port
    assert annotations["prometheus.io/path"] == "/metrics"
    [service_port] = _one("Service")["spec"]["ports"]
    assert service_port["port"] == web_port and ports.get(service_port["targetPort"]) == web_port


def test_selectors_match_the_worker_pods() -> None:
    deployment = _one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "Deployment": deployment["spec"]["selector"]["matchLabels"],
        "PodDisruptionBudget": _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        "Service": _one("Service")["spec"]["selector"],
    }
    for kind, selector in selectors.items():
        assert selector and selector.items() <= pod_labels.items(), kind
    pdb = _one("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["maxUnavailable"] == 1


def test_worker_runs_locked_down_with_room_for_a_graceful_stop() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    container = _container()
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    # The only writable places are emptyDirs, and the data folder is one of them.
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert set(mounts.values()) <= empty_dirs
    assert _data("ConfigMap")["PIPELINE_DATA_DIR"] in mounts


def test_env_references_point_at_the_configmap_and_secret() -> None:
    configmaps = {d["metadata"]["name"] for d in DOCS if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"] for d in DOCS if d["kind"] == "Secret"}
    container = _container()
    refs = container["envFrom"]
    assert {r["configMapRef"]["name"] for r in refs if "configMapRef" in r} == configmaps
    assert {r["secretRef"]["name"] for r in refs if "secretRef" in r} == secrets
    for var in container.get("env", []):
        source = var.get("valueFrom", {})
        if "configMapKeyRef" in source:
            assert source["configMapKeyRef"]["key"] in _data("ConfigMap")
        if "secretKeyRef" in source:
            assert source["secretKeyRef"]["key"] in _data("Secret")
        assert not var["name"].startswith("PIPELINE_"), "settings belong in the ConfigMap or Secret"


def test_configmap_and_secret_hold_real_valid_settings() -> None:
    config, secret = _data("ConfigMap"), _data("Secret")
    known = setting_names()
    assert not set(config) - known, set(config) - known
    assert not set(secret) - known, set(secret) - known
    assert set(secret) == SECRET_SETTINGS and not set(config) & SECRET_SETTINGS
    assert all("REPLACE_ME" in value for value in secret.values()), "placeholders must be obvious"
    settings = load_settings({**config, **secret})  # valid as the worker checks them
    assert settings.replication_factor == 3
    assert settings.kafka_security_protocol.startswith("SASL_")
