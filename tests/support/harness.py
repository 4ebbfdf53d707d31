"""Real processes for integration tests: the session's Kafka and Redis (started with the
same code as `dev up`), worker processes that can be SIGKILLed, and Kafka I/O helpers.

Each test gets its own topic and Redis prefix: two prefixes are two independent
deployments on one cluster (contract), so tests share one broker yet never see each
other's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from pipeline.settings import PROJECT_ROOT, Settings
from pipeline.settings import load as load_settings
from pipeline.topics import ensure_topics

HEALTH_TIMEOUT_S = 60.0


_LOW_PORTS = list(range(20_000, 32_000))  # below Linux's ephemeral range (32768+)
random.Random(os.getpid()).shuffle(_LOW_PORTS)


def free_port() -> int:
    """A free port outside the ephemeral range, so an outgoing connection of a test
    (or of Kafka) cannot take it between this check and the server's bind."""
    while _LOW_PORTS:
        port = _LOW_PORTS.pop()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port left")


@dataclass
class Deployment:
    """One isolated pipeline deployment on the shared test cluster."""

    bootstrap: str
    redis_url: str
    prefix: str
    workdir: Path
    partitions: int = 4
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, web_port: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "PIPELINE_BOOTSTRAP_SERVERS": self.bootstrap,
            "PIPELINE_REDIS_URL": self.redis_url,
            "PIPELINE_TOPIC_PREFIX": self.prefix,
            "PIPELINE_REDIS_PREFIX": self.prefix,
            "PIPELINE_WEB_PORT": str(web_port),
            "PIPELINE_WEB_HOST": "127.0.0.1",
            "PIPELINE_PARTITIONS": str(self.partitions),
            "PIPELINE_DATA_DIR": str(self.workdir / "data"),
            "PIPELINE_LOG_LEVEL": "info",
            # Payout holds stay on, as deployed: the reference ledger has no fraud rules,
            # so a test whose traffic could trip one says so (test_fraud_pipeline.py).
        })
        env.update(self.extra_env)
        return env

    def topic(self, name: str) -> str:
        return self.prefix + name

    def settings(self) -> Settings:
        return load_settings(self.env(web_port=1))

    def create_topics(self) -> None:
        asyncio.run(ensure_topics(self.settings()))


class Worker:
    """A `python -m pipeline worker` process (or another module's, e.g. `bench.naive`)."""

    def __init__(self, deployment: Deployment, name: str, module: tuple[str, ...] = ("pipeline", "worker")) -> None:
        self.deployment = deployment
        self.module = module
        self.port = free_port()
        self.log_path = deployment.workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, wait: bool = True) -> Worker:
        assert self.proc is None or self.proc.poll() is not None
        # The child gets its own copy of the log's descriptor: ours may close once it runs.
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {self.starts} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", *self.module], cwd=PROJECT_ROOT,
                env=self.deployment.env(self.port), stdout=log, stderr=subprocess.STDOUT,
            )
        self.starts += 1
        if wait:
            self.wait_healthy()
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, timeout_s: float = 5.0) -> tuple[int, Any]:
        """GET as a client of this deployment: with its bearer token, if it has one."""
        token = self.deployment.extra_env.get("PIPELINE_HTTP_TOKEN", "").split(",")[0]
        request = urllib.request.Request(self.url(path), headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def wait_healthy(self, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                status, body = self.get("/health", timeout_s=1.0)
                if status == 200 and body.get("status") == "ok":
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker not healthy after {timeout_s}s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, an open transaction stays open."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def crashes(self) -> list[str]:
        """Tracebacks and critical lines in the log: a test fails on any."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [line for line in text.splitlines() if "Traceback" in line or "[CRITICAL]" in line]


@dataclass(frozen=True)
class Sent:
    topic: str
    key: bytes | None
    value: bytes
    partition: int
    offset: int


async def produce(bootstrap: str, messages: list[tuple[str, bytes | None, bytes]]) -> list[Sent]:
    """Send in order (one in flight per partition keeps each partition's order)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futures = [await producer.send(t, v, key=k) for t, k, v in messages]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [Sent(t, k, v, m.partition, m.offset) for (t, k, v), m in zip(messages, metas)]


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    while not consumer.partitions_for_topic(topic):
        await consumer._client.force_metadata_update()  # aiokafka has no public refresh
        await asyncio.sleep(0.05)
    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]


async def read_all(
    bootstrap: str, topic: str, expected: int, timeout_s: float, committed: bool = True, settle_s: float = 1.0
) -> list[Any]:
    """Read a topic from the start until `expected` records or the timeout; then read
    for `settle_s` more to catch records beyond what was expected."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
        isolation_level="read_committed" if committed else "read_uncommitted",
    )
    await consumer.start()
    try:
        consumer.assign(await partitions_of(consumer, topic))
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        settle: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(json.loads(r.value) for r in records)
            if len(out) >= expected:
                settle = settle or time.monotonic() + settle_s
                if time.monotonic() >= settle:
                    break
        return out
    finally:
        await consumer.stop()


async def wait_end_offsets(bootstrap: str, topic: str, at_least: int, timeout_s: float) -> int:
    """Poll the sum of a topic's last stable offsets (committed records plus commit
    markers, so a slight overestimate) until it reaches `at_least`; cheap and prompt.
    A timeout raises: a test that went on would fail later, far from the cause."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        tps = await partitions_of(consumer, topic)

        async def total() -> int:
            return sum((await consumer.end_offsets(tps)).values())

        return await await_offsets(total, at_least, timeout_s, topic)
    finally:
        await consumer.stop()


async def await_offsets(read: Callable[[], Awaitable[int]], at_least: int, timeout_s: float, topic: str,
                        poll_s: float = 0.02) -> int:
    """`read()` until it gives at least `at_least`; TimeoutError naming `topic`, the
    offset reached and the one awaited once `timeout_s` passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        total = await read()
        if total >= at_least:
            return total
        if time.monotonic() > deadline:
            raise TimeoutError(f"{topic}: end offsets reached {total:,} after {timeout_s:g}s, "
                               f"awaiting {at_least:,}")
        await asyncio.sleep(poll_s)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@contextlib.contextmanager
def one_worker(bootstrap: str, redis_url: str, workdir: Path, name: str) -> Iterator[tuple[Deployment, Worker]]:
    """A deployment of its own and one worker for a whole test module, whose tests
    must each leave it running: a crash it logged fails the module."""
    d = Deployment(bootstrap, redis_url, f"t{os.urandom(5).hex()}-", workdir)
    d.create_topics()
    worker = Worker(d, name).start()
    try:
        yield d, worker
    finally:
        worker.stop()
    assert not worker.crashes(), worker.crashes()

