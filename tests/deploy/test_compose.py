"""docker-compose.yml, checked by structure: there is no Docker engine on the
development machines or in CI, so what `docker compose up` would trip on (a broken
quorum, a worker that cannot scale, a mount of a missing file, a misspelt setting) is
checked here instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.settings import PROJECT_ROOT
from pipeline.settings import load as load_settings
from tests.deploy.common import COMPOSE_FILE, PROMETHEUS_CONFIG, load_yaml, setting_names

KAFKA_IMAGE = "apache/kafka:3.9.1"


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return load_yaml(COMPOSE_FILE)["services"]


def _kafka(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if str(s.get("image", "")).startswith("apache/kafka")}


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path in the repository, container path) of each relative bind mount."""
    out = []
    for volume in service.get("volumes", []):
        source, _, rest = volume.partition(":")
        if source.startswith("."):
            out.append((PROJECT_ROOT / source, rest.split(":")[0]))
    return out


def test_three_kraft_nodes_form_one_quorum(services: dict[str, dict[str, Any]]) -> None:
    kafka = _kafka(services)
    assert len(kafka) == 3
    envs = {name: _env(s) for name, s in kafka.items()}
    assert {s["image"] for s in kafka.values()} == {KAFKA_IMAGE}
    node_ids = {name: int(env["KAFKA_NODE_ID"]) for name, env in envs.items()}
    assert len(set(node_ids.values())) == 3
    voters = {env["KAFKA_CONTROLLER_QUORUM_VOTERS"] for env in envs.values()}
    assert len(voters) == 1, "every node must name the same voters"
    parsed = {int(v.split("@")[0]): v.split("@")[1] for v in voters.pop().split(",")}
    assert {i: hostport.split(":")[0] for i, hostport in parsed.items()} == {i: n for n, i in node_ids.items()}
    assert len({env["CLUSTER_ID"] for env in envs.values()}) == 1
    for name, env in envs.items():
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert "container_name" not in kafka[name]


def test_worker_scales_and_its_settings_are_real(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "build" in worker and (PROJECT_ROOT / "Dockerfile").is_file()
    # --scale worker=N: a fixed name or host port would collide from the second replica.
    assert "container_name" not in worker
    for port in worker.get("ports", []):
        assert ":" not in str(port), f"fixed host port {port}"
    env = _env(worker)
    unknown = set(env) - setting_names()
    assert not unknown, f"not settings the pipeline reads: {unknown}"
    settings = load_settings(env)  # every value valid, as the worker would check it
    assert settings.replication_factor == 3
    assert sorted(settings.bootstrap_list) == sorted(f"{name}:9092" for name in _kafka(services))
    assert str(settings.web_port) in {str(p) for p in worker["expose"]}
    assert settings.redis_url.startswith("redis://redis:")
    assert set(worker["depends_on"]) == {*_kafka(services), "redis"}


def test_prometheus_scrapes_every_worker_replica(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus")
    mounts = dict((target, source) for source, target in _bind_mounts(prometheus))
    assert mounts["/etc/prometheus"] == PROMETHEUS_CONFIG.parent
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    [job] = [j for j in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"] if j["job_name"] == "ledger"]
    [sd] = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["type"] == "A"
    assert str(sd["port"]) == _env(services["worker"])["PIPELINE_WEB_PORT"]


def test_grafana_mounts_provisioning_and_dashboards(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana")
    mounts = _bind_mounts(grafana)
    assert mounts, "grafana mounts nothing from the repository"
    for source, _ in mounts:
        assert source.exists(), f"{source} is mounted but missing"
    targets = {target: source for source, target in mounts}
    assert targets["/etc/grafana/provisioning"] == PROJECT_ROOT / "deploy/grafana/provisioning"
    assert targets["/var/lib/grafana/dashboards"] == PROJECT_ROOT / "deploy/grafana/dashboards"
    home = _env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (PROJECT_ROOT / "deploy/grafana/dashboards" / Path(home).name).is_file()
    assert home.startswith("/var/lib/grafana/dashboards/")


def test_every_bind_mount_exists(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for source, _ in _bind_mounts(service):
            assert source.exists(), f"{name} mounts {source}, which is missing"
