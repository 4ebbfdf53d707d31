"""The ACL Job of deploy/k8s/acls: valid against the API schemas (strict), runs the real
`acls --apply` command line, and takes its connection settings from the workers'
ConfigMap, its credentials from its own admin Secret and the pipeline's principal from
the workers' username, so the ACLs are those of the principal the workers really use."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pipeline.__main__ import build_parser
from pipeline.acls import desired, parse_plan
from pipeline.settings import load as load_settings
from tests.deploy.common import K8S_DIR, load_yaml

ACLS_DIR = K8S_DIR / "acls"
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
DOCS = [doc for p in sorted(ACLS_DIR.glob("*.yaml")) if p.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(p.read_text()) if doc]


def _one(kind: str, docs: list[dict[str, Any]] = DOCS) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


def _worker_docs() -> list[dict[str, Any]]:
    return [doc for p in sorted(K8S_DIR.glob("*.yaml")) if p.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(p.read_text()) if doc]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("doc", DOCS, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_is_valid(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_kustomization_lists_the_job_and_its_secret_in_the_workers_namespace() -> None:
    kustomization = load_yaml(ACLS_DIR / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(p.name for p in ACLS_DIR.glob("*.yaml")
                                                        if p.name != "kustomization.yaml")
    namespace = load_yaml(K8S_DIR / "kustomization.yaml")["namespace"]
    assert kustomization["namespace"] == namespace
    assert all(d["metadata"]["namespace"] == namespace for d in DOCS)
    assert kustomization["images"] == load_yaml(K8S_DIR / "kustomization.yaml")["images"]


def test_the_job_applies_the_acls_of_the_workers_principal_with_admin_credentials() -> None:
    [container] = _one("Job")["spec"]["template"]["spec"]["containers"]
    workers = _worker_docs()
    config = _one("ConfigMap", workers)
    [worker] = _one("Deployment", workers)["spec"]["template"]["spec"]["containers"]
    assert container["image"] == worker["image"]
    assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    env = {v["name"]: v.get("valueFrom", v.get("value")) for v in container["env"]}
    admin = _one("Secret")
    for name in ("PIPELINE_KAFKA_USERNAME", "PIPELINE_KAFKA_PASSWORD"):
        ref = env[name]["secretKeyRef"]
        assert ref["name"] == admin["metadata"]["name"] and ref["key"] in admin["stringData"]
        assert "REPLACE_ME" in admin["stringData"][ref["key"]]
    # $(VAR) in args is expanded by Kubernetes from the container's env.
    values = {"LEDGER_KAFKA_USERNAME": config["data"][env["LEDGER_KAFKA_USERNAME"]["configMapKeyRef"]["key"]]}
    assert env["LEDGER_KAFKA_USERNAME"]["configMapKeyRef"]["name"] == config["metadata"]["name"]
    argv = [re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], a) for a in container["command"] + container["args"]]
    assert argv[:3] == ["python", "-m", "pipeline"]
    args = build_parser().parse_args(argv[3:])
    assert args.command == "acls" and args.apply
    assert args.pipeline_principal == f"User:{config['data']['PIPELINE_KAFKA_USERNAME']}"
    settings = load_settings({**config["data"], **{k: v for k, v in admin["stringData"].items()}})
    acls = desired(settings, parse_plan(args.pipeline_principal, args.producer, args.reader, args.redrive))
    assert {a.principal for a in acls} >= {"User:coin-ledger", "User:payments", "User:dashboards"}


def test_the_job_runs_locked_down() -> None:
    pod = _one("Job")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
