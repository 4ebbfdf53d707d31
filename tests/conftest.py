"""Session-wide real Kafka and Redis, and per-test isolated deployments and workers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.harness import Deployment, Worker, free_port
from tools.infra.kafka import LocalKafka
from tools.infra.redis import LocalRedis


@dataclass(frozen=True)
class Cluster:
    kafka: LocalKafka
    redis: LocalRedis

    @property
    def bootstrap(self) -> str:
        return self.kafka.address

    @property
    def redis_url(self) -> str:
        return f"redis://{self.redis.address}/0"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One broker and one Redis for the whole session, on free ports."""
    root = tmp_path_factory.mktemp("infra")
    kafka = LocalKafka(root, "127.0.0.1", free_port(), free_port())
    redis = LocalRedis(root, "127.0.0.1", free_port())
    started = time.monotonic()
    kafka.start()
    print(f"\nkafka ready in {time.monotonic() - started:.1f}s at {kafka.address}")
    redis.start()
    try:
        yield Cluster(kafka, redis)
    finally:
        kafka.stop()
        redis.stop()


@pytest.fixture
def deployment(cluster: Cluster, tmp_path: Path) -> Deployment:
    return Deployment(cluster.bootstrap, cluster.redis_url, f"t{uuid.uuid4().hex[:10]}-", tmp_path)


@pytest.fixture
def workers(deployment: Deployment) -> Iterator[list[Worker]]:
    """Workers a test starts; all are stopped at the end, and a crash logged by any
    (a traceback, or a critical line) fails the test even if its assertions passed."""
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()
    crashes = {w.log_path.name: w.crashes() for w in started if w.crashes()}
    assert not crashes, f"workers logged crashes: {crashes}"
