"""Kafka with SASL/SCRAM: a worker with the right credentials processes events, one
with a wrong password is refused at start in one line that does not show it. A broker
of its own, with a SCRAM-SHA-512 listener beside its plain one."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.settings import PROJECT_ROOT
from tests.conftest import Cluster
from tests.support.harness import Deployment, Worker, free_port, produce, read_all, run
from tools.infra.kafka import LocalKafka

pytestmark = pytest.mark.integration
USER, PASSWORD = "ledger", "scram-Pa55-word"


@pytest.fixture(scope="module")
def scram_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    kafka = LocalKafka(tmp_path_factory.mktemp("scram"), "127.0.0.1", free_port(), free_port(),
                       sasl_port=free_port(), scram_users={USER: PASSWORD})
    kafka.start()
    yield kafka
    kafka.stop()


def _deployment(cluster: Cluster, kafka: LocalKafka, tmp_path: Path, password: str) -> Deployment:
    d = Deployment(f"127.0.0.1:{kafka.sasl_port}", cluster.redis_url, f"t{uuid.uuid4().hex[:10]}-", tmp_path)
    d.extra_env.update({"PIPELINE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                        "PIPELINE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "PIPELINE_KAFKA_USERNAME": USER,
                        "PIPELINE_KAFKA_PASSWORD": password})
    return d


def test_a_wrong_kafka_password_is_refused_in_one_line(
    cluster: Cluster, scram_kafka: LocalKafka, tmp_path: Path
) -> None:
    d = _deployment(cluster, scram_kafka, tmp_path, "wrong-" + PASSWORD)
    proc = subprocess.run([sys.executable, "-m", "pipeline", "worker"], cwd=PROJECT_ROOT, env=d.env(free_port()),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "PIPELINE_KAFKA_PASSWORD" in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert PASSWORD not in proc.stderr + proc.stdout


def test_the_right_credentials_work_for_the_worker_and_the_commands(cluster: Cluster, scram_kafka: LocalKafka,
                                                                     tmp_path: Path, workers: list[Worker]) -> None:
    d = _deployment(cluster, scram_kafka, tmp_path, PASSWORD)
    topics_cmd = subprocess.run([sys.executable, "-m", "pipeline", "topics"], cwd=PROJECT_ROOT, env=d.env(free_port()),
                                capture_output=True, text=True, timeout=120)
    assert topics_cmd.returncode == 0, topics_cmd.stderr[-2000:]
    worker = Worker(d, "worker")
    workers.append(worker.start())
    plain = scram_kafka.address  # the test's own producer and reader use the plain listener
    value = {"event_id": "r1", "user_id": "u1", "coins": 500, "amount_cents": 500, "currency": "USD",
             "ts": int(time.time() * 1000)}
    run(produce(plain, [(d.topic("recharges"), b"u1", json.dumps(value).encode())]))
    [outcome] = run(read_all(plain, d.topic("ledger-outcomes"), 1, timeout_s=60))
    assert (outcome["event_id"], outcome["status"], outcome["balance_after"]) == ("r1", "accepted", 500)
    assert PASSWORD not in worker.log_path.read_text()
