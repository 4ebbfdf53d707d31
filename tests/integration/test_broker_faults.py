"""Brokers SIGKILLed mid-stream and restarted: the single broker (the worker reconnects
by itself: its transactions fail, the partitions are rebuilt from Kafka with backoff),
and one of a three-node cluster (replication 3, min ISR 2, acks=all). Outcomes,
balances and diamonds come out exact. Brokers of their own: the session's is shared by
the other tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import Cluster
from tests.integration.test_ledger_e2e import (
    CREATORS,
    DONE_TIMEOUT_S,
    EVENTS,
    _assert_same_outcomes,
    _backlog,
    _check_state,
    _eventually,
    _users_of,
)
from tests.support.harness import Deployment, Worker, free_port, read_all, run, wait_end_offsets
from tools.infra.kafka import LocalKafka, new_cluster_id

pytestmark = pytest.mark.integration
BROKER_DOWN_S = 5


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[LocalKafka]:
    kafka = LocalKafka(tmp_path / "kafka", "127.0.0.1", free_port(), free_port())
    kafka.start()
    yield kafka
    kafka.stop()


def _kill_a_broker_mid_stream(d: Deployment, workers: list[Worker], victim: LocalKafka, seed: int) -> None:
    """A backlog, then `victim` SIGKILLed with about a quarter of it done, down
    BROKER_DOWN_S, restarted: every outcome and balance exact, the worker never restarted."""
    d.extra_env["PIPELINE_MAX_BATCH"] = "50"  # many transactions: the kill lands inside one
    stream, model, _ = _backlog(d, seed=seed, events=2 * EVENTS)  # produced with acks=all
    worker = Worker(d, "w1")
    workers.append(worker)
    worker.start()
    run(wait_end_offsets(d.bootstrap, d.topic("ledger-outcomes"), len(model.outcomes) // 4, DONE_TIMEOUT_S))
    before = len(run(read_all(d.bootstrap, d.topic("ledger-outcomes"), len(model.outcomes), 0.5, settle_s=0)))
    assert before < len(model.outcomes) * 3 // 4, "the backlog was nearly done before the kill: the test proves little"
    victim.kill()
    killed = time.monotonic()
    time.sleep(BROKER_DOWN_S)
    assert worker.proc is not None and worker.proc.poll() is None, "the worker must outlive the broker"
    victim.start(timeout_s=180)
    outcomes = run(read_all(d.bootstrap, d.topic("ledger-outcomes"), len(model.outcomes), 3 * DONE_TIMEOUT_S))
    _assert_same_outcomes(outcomes, model.outcomes)
    assert worker.proc.poll() is None  # reconnected, never restarted
    print(f"\nbroker killed with {before} of {len(model.outcomes)} outcomes committed; all exact "
          f"{time.monotonic() - killed:.1f} s after the kill")
    _eventually(lambda: _check_state(worker, model, _users_of(stream), CREATORS), timeout_s=60)


def test_broker_sigkill_and_restart_the_worker_reconnects_and_loses_nothing(
    cluster: Cluster, own_kafka: LocalKafka, tmp_path: Path, workers: list[Worker]
) -> None:
    d = Deployment(own_kafka.address, cluster.redis_url, f"t{uuid.uuid4().hex[:10]}-", tmp_path)
    _kill_a_broker_mid_stream(d, workers, own_kafka, seed=41)


@pytest.fixture
def kafka_trio(tmp_path: Path) -> Iterator[list[LocalKafka]]:
    """Three KRaft nodes (each broker and controller), replication 3, min ISR 2."""
    ports = {i: (free_port(), free_port()) for i in (1, 2, 3)}
    cid = new_cluster_id()
    nodes = [LocalKafka(tmp_path / f"node{i}", "127.0.0.1", port, ctl, node_id=i,
                        quorum={j: c for j, (_, c) in ports.items()}, cluster_id=cid)
             for i, (port, ctl) in ports.items()]
    with ThreadPoolExecutor(3) as pool:  # a node is ready only once a quorum of controllers runs
        list(pool.map(lambda n: n.start(timeout_s=180), nodes))
    yield nodes
    for n in nodes:
        n.stop()


def test_one_of_three_brokers_sigkilled_under_load_loses_nothing(
    cluster: Cluster, kafka_trio: list[LocalKafka], tmp_path: Path, workers: list[Worker]
) -> None:
    d = Deployment(",".join(n.address for n in kafka_trio), cluster.redis_url, f"t{uuid.uuid4().hex[:10]}-", tmp_path)
    d.extra_env["PIPELINE_REPLICATION_FACTOR"] = "3"
    _kill_a_broker_mid_stream(d, workers, kafka_trio[1], seed=43)
