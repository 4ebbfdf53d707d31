"""Start-up faults with real servers. Redis with a password (the URL carries it): the
right one works end to end, a wrong one stops the worker at start with one line that
names the setting and not the secret. (Bad settings, an unreachable broker and an
unwritable data folder: tests/test_cli.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.settings import PROJECT_ROOT
from tests.integration.test_ledger_e2e import _eventually
from tests.support.harness import Deployment, Worker, free_port, produce, read_all, run
from tools.infra.redis import LocalRedis

pytestmark = pytest.mark.integration
SECRET = "s3cret-Pa55"


def _shows_coins(worker: Worker, user: str, coins: int) -> None:
    status, body = worker.get(f"/users/{user}")
    assert (status, body.get("coins")) == (200, coins)


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    server = LocalRedis(tmp_path / "locked", "127.0.0.1", free_port(), password=SECRET)
    server.start()
    yield server
    server.stop()


def test_a_wrong_redis_password_is_one_line_without_the_secret(
    deployment: Deployment, locked_redis: LocalRedis
) -> None:
    env = {**deployment.env(free_port()), "PIPELINE_REDIS_URL": f"redis://:wrong-{SECRET}@{locked_redis.address}/0"}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "worker"], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "PIPELINE_REDIS_URL" in proc.stderr and "Traceback" not in proc.stderr
    assert SECRET not in proc.stderr + proc.stdout


def test_the_right_password_works_end_to_end(deployment: Deployment, locked_redis: LocalRedis,
                                             workers: list[Worker]) -> None:
    deployment.extra_env["PIPELINE_REDIS_URL"] = f"redis://:{SECRET}@{locked_redis.address}/0"
    deployment.create_topics()
    worker = Worker(deployment, "worker")
    workers.append(worker.start())
    value = {"event_id": "r1", "user_id": "u1", "coins": 500, "amount_cents": 500, "currency": "USD",
             "ts": int(time.time() * 1000)}
    run(produce(deployment.bootstrap, [(deployment.topic("recharges"), b"u1", json.dumps(value).encode())]))
    assert len(run(read_all(deployment.bootstrap, deployment.topic("ledger-outcomes"), 1, timeout_s=60))) == 1
    _eventually(lambda: _shows_coins(worker, "u1", 500))
    assert SECRET not in worker.log_path.read_text()


def test_a_worker_starts_while_redis_is_down_and_fills_it_when_it_is_back(
    deployment: Deployment, tmp_path: Path, workers: list[Worker]
) -> None:
    """The ledger does not depend on Redis: a worker (re)started during an outage runs,
    and writes the read model once Redis is back."""
    later = LocalRedis(tmp_path / "later", "127.0.0.1", free_port())
    deployment.extra_env["PIPELINE_REDIS_URL"] = f"redis://{later.address}/0"
    deployment.create_topics()
    value = {"event_id": "r1", "user_id": "u1", "coins": 500, "amount_cents": 500, "currency": "USD",
             "ts": int(time.time() * 1000)}
    run(produce(deployment.bootstrap, [(deployment.topic("recharges"), b"u1", json.dumps(value).encode())]))
    worker = Worker(deployment, "worker")
    workers.append(worker.start())
    assert len(run(read_all(deployment.bootstrap, deployment.topic("ledger-outcomes"), 1, timeout_s=60))) == 1
    later.start()
    try:
        _eventually(lambda: _shows_coins(worker, "u1", 500), timeout_s=20)
    finally:
        later.stop()
