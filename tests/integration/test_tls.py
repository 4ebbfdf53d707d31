"""TLS to Kafka and Redis, with certificates this module makes (trustme): a broker of its
own with an SSL listener beside its plain one, and a Redis that speaks only TLS. A worker
and the `topics` command work over both with the right CA files; a wrong CA, or a
certificate for another host name, stops start-up with exit 2 and one line naming the
setting to fix, for Kafka and Redis alike. Redis merely down over rediss:// still only
warns (the ledger does not need it to start)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from agents.readmodel.redis_sink import hash_key
from pipeline import redis_client
from pipeline.settings import PROJECT_ROOT
from tests.support.harness import Deployment, Worker, free_port, produce, read_all, run
from tools.infra.kafka import LocalKafka
from tools.infra.redis import LocalRedis

pytestmark = pytest.mark.integration
REDIS_PASSWORD = "tls-redis-Pa55"


@dataclass(frozen=True)
class Tls:
    kafka: LocalKafka
    redis: LocalRedis
    ca_file: Path  # the CA that signed both servers' certificates (for 127.0.0.1 only)
    other_ca_file: Path  # a CA that signed neither

    @property
    def ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka.ssl_port}"

    @property
    def rediss_url(self) -> str:
        return f"rediss://:{REDIS_PASSWORD}@127.0.0.1:{self.redis.port}/0"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    root = tmp_path_factory.mktemp("tls")
    ca, other = trustme.CA(key_type=trustme.KeyType.RSA), trustme.CA(key_type=trustme.KeyType.RSA)
    # An IP address only: connecting by the name `localhost` is a host-name mismatch.
    server = ca.issue_cert("127.0.0.1", key_type=trustme.KeyType.RSA)
    ca_file, other_ca_file = root / "ca.pem", root / "other-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    other.cert_pem.write_to_path(str(other_ca_file))
    # Kafka's PEM key store takes an unencrypted key only in PKCS#8 form.
    key = serialization.load_pem_private_key(server.private_key_pem.bytes(), password=None)
    pkcs8 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode()
    chain = "".join(pem.bytes().decode() for pem in server.cert_chain_pems)
    cert_file, key_file = root / "server.pem", root / "server.key"
    cert_file.write_text(chain)
    key_file.write_text(pkcs8)
    key_file.chmod(0o600)
    kafka = LocalKafka(root, "127.0.0.1", free_port(), free_port(), ssl_port=free_port(),
                       ssl_cert_chain=chain, ssl_key=pkcs8, ssl_truststore=ca.cert_pem.bytes().decode())
    redis = LocalRedis(root, "127.0.0.1", free_port(), password=REDIS_PASSWORD,
                       tls_cert_file=cert_file, tls_key_file=key_file, tls_ca_file=ca_file)
    redis.start()
    kafka.start()
    try:
        yield Tls(kafka, redis, ca_file, other_ca_file)
    finally:
        kafka.stop()
        redis.stop()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Like conftest's, without its session cluster (this module has its own servers)."""
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()
    crashes = {w.log_path.name: w.crashes() for w in started if w.crashes()}
    assert not crashes, f"workers logged crashes: {crashes}"


def _deployment(tls: Tls, tmp_path: Path, **env: str) -> Deployment:
    d = Deployment(tls.ssl_bootstrap, tls.rediss_url, f"t{uuid.uuid4().hex[:10]}-", tmp_path)
    d.extra_env.update({"PIPELINE_KAFKA_SECURITY_PROTOCOL": "SSL", "PIPELINE_KAFKA_CA_FILE": str(tls.ca_file),
                        "PIPELINE_REDIS_CA_FILE": str(tls.ca_file)})
    d.extra_env.update(env)
    return d


def _command(d: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=PROJECT_ROOT, env=d.env(free_port()),
                          capture_output=True, text=True, timeout=120)


def _refused_in_one_line(proc: subprocess.CompletedProcess[str], setting: str, reason: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr[-3000:]
    assert setting in proc.stderr and reason in proc.stderr.lower() and "Traceback" not in proc.stderr
    assert REDIS_PASSWORD not in proc.stderr + proc.stdout


def test_a_worker_runs_end_to_end_over_tls(tls: Tls, tmp_path: Path, workers: list[Worker]) -> None:
    d = _deployment(tls, tmp_path)
    worker = Worker(d, "worker")
    workers.append(worker.start())
    plain = tls.kafka.address  # the test's own producer and reader use the plain listener
    value = {"event_id": "r1", "user_id": "u1", "coins": 500, "amount_cents": 500, "currency": "USD",
             "ts": int(time.time() * 1000)}
    run(produce(plain, [(d.topic("recharges"), b"u1", json.dumps(value).encode())]))
    [outcome] = run(read_all(plain, d.topic("ledger-outcomes"), 1, timeout_s=60))
    assert (outcome["event_id"], outcome["status"], outcome["balance_after"]) == ("r1", "accepted", 500)
    # The read model was written over TLS (Redis has no plain port), and the HTTP read
    # path reads it back over TLS too.
    settings = d.settings()
    client = redis_client.connect_sync(settings, decode_responses=True)
    try:
        deadline = time.monotonic() + 20
        while client.hget(hash_key(settings, "user", "u1"), "coins") != "500" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.hget(hash_key(settings, "user", "u1"), "coins") == "500"
    finally:
        client.close()
    status, body = worker.get("/users/u1")
    assert (status, body.get("coins")) == (200, 500)
    log = worker.log_path.read_text()
    assert "unreachable" not in log and REDIS_PASSWORD not in log


def test_the_topics_command_works_over_ssl(tls: Tls, tmp_path: Path) -> None:
    d = _deployment(tls, tmp_path)
    proc = _command(d, "topics")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{d.topic('recharges')}: 4 partitions" in proc.stdout


@pytest.mark.parametrize("command", ["worker", "topics"])
def test_kafka_with_a_wrong_ca_is_refused_in_one_line(tls: Tls, tmp_path: Path, command: str) -> None:
    d = _deployment(tls, tmp_path, PIPELINE_KAFKA_CA_FILE=str(tls.other_ca_file))
    _refused_in_one_line(_command(d, command), "PIPELINE_KAFKA_CA_FILE", "certificate")


def test_kafka_with_a_certificate_for_another_host_is_refused_in_one_line(tls: Tls, tmp_path: Path) -> None:
    d = _deployment(tls, tmp_path, PIPELINE_BOOTSTRAP_SERVERS=f"localhost:{tls.kafka.ssl_port}")
    _refused_in_one_line(_command(d, "worker"), "PIPELINE_KAFKA_CA_FILE", "hostname mismatch")


def test_redis_with_a_wrong_ca_is_refused_in_one_line(tls: Tls, tmp_path: Path) -> None:
    d = _deployment(tls, tmp_path, PIPELINE_REDIS_CA_FILE=str(tls.other_ca_file))
    _refused_in_one_line(_command(d, "worker"), "PIPELINE_REDIS_CA_FILE", "certificate")


def test_redis_with_a_certificate_for_another_host_is_refused_in_one_line(tls: Tls, tmp_path: Path) -> None:
    d = _deployment(tls, tmp_path, PIPELINE_REDIS_URL=f"rediss://:{REDIS_PASSWORD}@localhost:{tls.redis.port}/0")
    _refused_in_one_line(_command(d, "worker"), "PIPELINE_REDIS_CA_FILE", "hostname mismatch")


def test_redis_merely_down_over_tls_still_only_warns(tls: Tls, tmp_path: Path, workers: list[Worker]) -> None:
    d = _deployment(tls, tmp_path, PIPELINE_REDIS_URL=f"rediss://127.0.0.1:{free_port()}/0")
    worker = Worker(d, "worker")
    workers.append(worker.start(wait=False))
    deadline = time.monotonic() + 60
    while "unreachable" not in worker.log_path.read_text() and time.monotonic() < deadline:
        assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
        time.sleep(0.2)
    assert "PIPELINE_REDIS_URL is unreachable" in worker.log_path.read_text(), worker.tail()
    time.sleep(2)  # past the Redis check: it runs on
    assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
