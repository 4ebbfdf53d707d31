"""The local Kafka and Redis that `dev up` and the test session rely on really serve clients."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
import redis as redis_py
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tools.infra.kafka import LocalKafka
from tools.infra.redis import LocalRedis

HOST = "127.0.0.1"
TOPIC = "infra-probe"


def _free_port_run(first: int, count: int) -> int:
    """First port from `first` (in steps of 10) where `count` consecutive ports are free,
    so the test never collides with a developer's `dev up` on the default ports."""
    for base in range(first, first + 2000, 10):
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind((HOST, port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} free consecutive ports from {first}")


async def _produce(bootstrap: str, value: bytes) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    # Transactional, like the pipeline: proves the transaction state log works on one node.
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id="infra-probe")
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(TOPIC, value)
    finally:
        await producer.stop()


async def _consume_first(bootstrap: str) -> bytes:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(TOPIC, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        msg = await asyncio.wait_for(consumer.getone(), timeout=30)
        assert msg.value is not None
        return msg.value
    finally:
        await consumer.stop()


@pytest.mark.integration
def test_local_kafka_and_redis_serve_and_stop(tmp_path: Path) -> None:
    kafka = LocalKafka(tmp_path, HOST, _free_port_run(29092, 2))
    redis = LocalRedis(tmp_path, HOST, _free_port_run(26379, 1), password="p@ss word")
    try:
        t0 = time.monotonic()
        redis.start()
        redis_s = time.monotonic() - t0
        t0 = time.monotonic()
        kafka.start()
        kafka_s = time.monotonic() - t0
        print(f"ready in: redis {redis_s:.2f} s, kafka {kafka_s:.2f} s")
        assert kafka.is_running() and redis.is_running()

        pids = (kafka.pid(), redis.pid())
        t0 = time.monotonic()
        kafka.start()
        redis.start()
        assert time.monotonic() - t0 < 2, "start() on a running server must be a quick no-op"
        assert (kafka.pid(), redis.pid()) == pids
        assert kafka.status().startswith("kafka 3.9.1: running") and kafka.address in kafka.status()
        assert redis.status().startswith("redis: running") and redis.address in redis.status()

        asyncio.run(_produce(kafka.address, b"hello"))
        assert asyncio.run(_consume_first(kafka.address)) == b"hello"

        client = redis_py.Redis(host=HOST, port=redis.port, password="p@ss word", socket_timeout=5)
        try:
            client.set("infra-probe", "42")
            assert client.get("infra-probe") == b"42"
        finally:
            client.close()

        # A crashed broker restarts on its existing (already formatted) storage, data intact.
        kafka.kill()
        assert not kafka.is_running()
        t0 = time.monotonic()
        kafka.start()
        print(f"kafka restart after SIGKILL: {time.monotonic() - t0:.2f} s")
        assert asyncio.run(_consume_first(kafka.address)) == b"hello"
    finally:
        kafka.stop()
        redis.stop()

    assert "p@ss word" not in redis.log_file.read_text(), "the password must not reach the log"
    assert not kafka.is_running() and not redis.is_running()
    assert kafka.status().startswith("kafka 3.9.1: stopped")
    assert redis.status().startswith("redis: stopped")
    assert not kafka.pid_file.exists() and not redis.pid_file.exists()
