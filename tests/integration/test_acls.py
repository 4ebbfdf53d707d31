"""Kafka ACLs (`python -m pipeline acls`): on a broker with KRaft's StandardAuthorizer that
denies what no ACL allows, the ACLs applied by an admin let a worker running as the
pipeline's principal process events written by the producing services, and a reader read
the outcome; a producer cannot write an internal topic or another service's input, a
reader cannot forge an outcome, and the pipeline cannot write its inputs.

One broker of its own for the module (SCRAM-SHA-512 listener, super user User:admin) and
its own Redis; one worker for every test."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import TopicAuthorizationFailedError
from aiokafka.structs import TopicPartition

from pipeline.settings import PROJECT_ROOT
from tests.support.harness import Deployment, Worker, free_port
from tools.infra.kafka import LocalKafka
from tools.infra.redis import LocalRedis

pytestmark = pytest.mark.integration
USERS = {name: f"{name}-Pa55-word" for name in ("admin", "ledger", "payments", "gifting", "dashboards")}
PARTITIONS = 2


class Env:
    def __init__(self, kafka: LocalKafka, deployment: Deployment, worker: Worker) -> None:
        self.kafka, self.deployment, self.worker = kafka, deployment, worker
        self.sasl = f"127.0.0.1:{kafka.sasl_port}"

    def options(self, user: str) -> dict[str, Any]:
        return {"bootstrap_servers": self.sasl, "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": user, "sasl_plain_password": USERS[user]}

    def acls(self, user: str, *extra: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
        env = self.deployment.env(free_port())
        env.update({"PIPELINE_KAFKA_USERNAME": user, "PIPELINE_KAFKA_PASSWORD": password or USERS[user]})
        argv = [sys.executable, "-m", "pipeline", "acls", "--pipeline-principal", "User:ledger",
                "--producer", "recharges=User:payments", "--producer", "gifts=User:gifting",
                "--reader", "User:dashboards", *extra]
        return subprocess.run(argv, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60)

    async def produce(self, user: str, topic: str, key: bytes, value: dict[str, Any], idempotent: bool = True) -> None:
        # Idempotent, like a real service: its InitProducerId is allowed by WRITE on a topic
        # (no IDEMPOTENT_WRITE on the cluster needed since Kafka 3.0).
        producer = AIOKafkaProducer(**self.options(user), acks="all", enable_idempotence=idempotent,
                                    request_timeout_ms=10_000)
        try:
            await producer.start()
            await producer.send_and_wait(self.deployment.topic(topic), json.dumps(value).encode(), key=key)
        finally:
            await producer.stop()

    async def read(self, user: str, topic: str, expected: int, timeout_s: float = 60) -> list[dict[str, Any]]:
        consumer = AIOKafkaConsumer(**self.options(user), enable_auto_commit=False, auto_offset_reset="earliest",
                                    isolation_level="read_committed")
        await consumer.start()
        try:
            consumer.assign([TopicPartition(self.deployment.topic(topic), p) for p in range(PARTITIONS)])
            out: list[dict[str, Any]] = []
            deadline = time.monotonic() + timeout_s
            while len(out) < expected and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    out.extend(json.loads(r.value) for r in records)
            return out
        finally:
            await consumer.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("acls")
    kafka = LocalKafka(root, "127.0.0.1", free_port(), free_port(), sasl_port=free_port(),
                       scram_users=USERS, super_users=["User:admin"])
    redis = LocalRedis(root, "127.0.0.1", free_port())
    kafka.start()
    redis.start()
    deployment = Deployment(f"127.0.0.1:{kafka.sasl_port}", f"redis://{redis.address}/0",
                            f"t{uuid.uuid4().hex[:10]}-", root, partitions=PARTITIONS)
    deployment.extra_env.update({"PIPELINE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                                 "PIPELINE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                                 "PIPELINE_KAFKA_USERNAME": "ledger", "PIPELINE_KAFKA_PASSWORD": USERS["ledger"]})
    worker = Worker(deployment, "worker")
    try:
        e = Env(kafka, deployment, worker)
        applied = e.acls("admin", "--apply")
        assert applied.returncode == 0, applied.stderr[-2000:]
        assert " 0 created" not in applied.stdout, applied.stdout
        worker.start()  # as User:ledger: creates the topics, joins its group, fences its transactional ids
        yield e
        assert not worker.crashes(), worker.tail()
    finally:
        worker.stop()
        kafka.stop()
        redis.stop()


def test_apply_is_idempotent_and_needs_an_admin(env: Env) -> None:
    again = env.acls("admin", "--apply")
    assert again.returncode == 0, again.stderr[-2000:]
    lines = again.stdout.splitlines()
    assert lines[-1].endswith(" 0 created, " + lines[-1].split()[0] + " already present"), again.stdout
    assert all(row.endswith("  present") for row in lines[2:-3]), again.stdout  # state column
    # A service's credentials cannot grant themselves more: refused in one line.
    refused = env.acls("payments", "--apply")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "PIPELINE_KAFKA_USERNAME=payments may not manage ACLs" in refused.stderr
    assert "Traceback" not in refused.stderr
    # A wrong password: one line naming the settings, never the password.
    wrong = env.acls("admin", "--apply", password="not-" + USERS["admin"])
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1, wrong.stderr
    assert "PIPELINE_KAFKA_PASSWORD" in wrong.stderr and USERS["admin"] not in wrong.stderr + wrong.stdout


def test_the_pipeline_works_with_only_its_acls(env: Env) -> None:
    ts = int(time.time() * 1000)
    recharge = {"event_id": "acl-r1", "user_id": "u1", "coins": 500, "amount_cents": 500, "currency": "USD", "ts": ts}
    gift = {"event_id": "acl-g1", "sender_id": "u1", "creator_id": "c1", "stream_id": "s1", "gift_id": "perfume",
            "quantity": 2, "ts": ts + 1}
    asyncio.run(env.produce("payments", "recharges", b"u1", recharge))
    asyncio.run(env.produce("gifting", "gifts", b"u1", gift))
    outcomes = {o["event_id"]: o for o in asyncio.run(env.read("dashboards", "ledger-outcomes", 2))}
    assert (outcomes["acl-r1"]["status"], outcomes["acl-r1"]["balance_after"]) == ("accepted", 500), outcomes
    assert (outcomes["acl-g1"]["status"], outcomes["acl-g1"]["balance_after"]) == ("accepted", 460), outcomes
    # The creator's credit went through the internal repartition topic and its changelog.
    deadline = time.monotonic() + 30
    while (body := env.worker.get("/creators/c1")[1]).get("diamonds") != 20 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert body["diamonds"] == 20, body


@pytest.mark.parametrize(("user", "topic"), [
    ("payments", "ledger-creator-ops"),  # a forged credit
    ("payments", "ledger-users-changelog"),  # a forged balance
    ("payments", "gifts"),  # another service's input
    ("dashboards", "ledger-outcomes"),  # a forged outcome
    ("ledger", "recharges"),  # the pipeline does not write its inputs (no --redrive)
])
def test_writes_outside_a_principals_acls_are_refused(env: Env, user: str, topic: str) -> None:
    value = {"event_id": "forged", "user_id": "u1", "coins": 1_000_000, "amount_cents": 0, "currency": "USD",
             "ts": int(time.time() * 1000)}
    # Not idempotent: a principal that may write no topic at all (a reader) would be
    # refused earlier, at InitProducerId (ClusterAuthorizationFailed).
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(env.produce(user, topic, b"u1", value, idempotent=False))


def test_a_reader_reads_only_the_outputs(env: Env) -> None:
    async def read_input() -> tuple[int, set[str]]:
        consumer = AIOKafkaConsumer(**env.options("dashboards"), enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            consumer.assign([TopicPartition(env.deployment.topic("recharges"), p) for p in range(PARTITIONS)])
            got = sum(len(rs) for rs in (await consumer.getmany(timeout_ms=2_000)).values())
            return got, set(consumer._client.cluster.unauthorized_topics)  # aiokafka keeps the broker's verdict there
        finally:
            await consumer.stop()

    got, unauthorized = asyncio.run(read_input())
    assert got == 0 and env.deployment.topic("recharges") in unauthorized, unauthorized


def test_redrive_needs_the_redrive_acls(env: Env) -> None:
    """Last in the module: it grants the pipeline's principal writes on its inputs."""
    asyncio.run(env.produce("payments", "recharges", b"u9", {"event_id": "acl-bad", "user_id": "u9"}))  # no coins
    letters = asyncio.run(env.read("dashboards", "dead-letters", 1))
    assert [x["source_topic"] for x in letters] == [env.deployment.topic("recharges")], letters

    def redrive() -> subprocess.CompletedProcess[str]:  # as the workers' principal
        return subprocess.run([sys.executable, "-m", "pipeline", "redrive", "--apply"], cwd=PROJECT_ROOT,
                              env=env.deployment.env(free_port()), capture_output=True, text=True, timeout=60)

    refused = redrive()
    assert refused.returncode != 0 and "AuthorizationFailed" in refused.stderr, refused.stdout + refused.stderr
    granted = env.acls("admin", "--apply", "--redrive")
    # 4 inputs, 1 id
    assert granted.returncode == 0 and ": 5 created" in granted.stdout.splitlines()[-1], granted.stdout
    sent = redrive()
    assert sent.returncode == 0 and "sent 1 messages" in sent.stdout, sent.stdout + sent.stderr
