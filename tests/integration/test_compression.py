"""Every codec Kafka has (gzip, snappy, lz4, zstd), both ways, with a client of another
implementation: recharges that kcat (librdkafka) compresses are decided by one worker,
which keeps running; and batches that aiokafka compresses the way the pipeline's
producers build them (create_batch/send_batch in a transaction, batches.py) are read
back by kcat. Each codec is checked on the broker's disk, in the record batches'
attributes, so a client that quietly sent uncompressed batches would fail the test."""

from __future__ import annotations

import asyncio
import json
import re
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline import topics
from tests.conftest import Cluster
from tests.support.harness import Deployment, Worker, one_worker, run
from tools.infra.debian import kcat

pytestmark = pytest.mark.integration

CODECS = ("gzip", "snappy", "lz4", "zstd")
_CODEC_OF_ID = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}  # attributes & 0x7
_CONTROL = 0x20  # attributes bit 5: a control batch (commit or abort marker)
USERS = 6
PER_USER = 4


def now_ms() -> int:
    return int(time.time() * 1000)


def codecs_on_disk(cluster: Cluster, topic: str) -> set[str]:
    """The codecs of the record batches in the broker's log segments of `topic` (v2
    batch header: baseOffset int64, batchLength int32, leaderEpoch int32, magic int8,
    crc uint32, attributes int16); transaction markers are left out."""
    pattern = re.compile(re.escape(topic) + r"-\d+")
    seen: set[str] = set()
    for directory in Path(cluster.kafka.log_dir).iterdir():
        if not pattern.fullmatch(directory.name):
            continue
        for segment in directory.glob("*.log"):
            data = segment.read_bytes()
            pos = 0
            while pos + 23 <= len(data):
                (length,) = struct.unpack_from(">i", data, pos + 8)
                if length <= 0 or pos + 12 + length > len(data):
                    break
                (attributes,) = struct.unpack_from(">h", data, pos + 21)
                if not attributes & _CONTROL:  # a transaction marker is never compressed
                    seen.add(_CODEC_OF_ID.get(attributes & 0x7, f"codec {attributes & 0x7}"))
                pos += 12 + length
    return seen


@pytest.fixture(scope="module")
def live(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, Worker]]:
    """One deployment and worker for every codec: each must leave it running."""
    with one_worker(cluster.bootstrap, cluster.redis_url, tmp_path_factory.mktemp("codecs"), "codecs") as live:
        yield live


def recharge(eid: str, user: str, coins: int) -> dict[str, Any]:
    return {"event_id": eid, "user_id": user, "coins": coins, "amount_cents": coins, "currency": "USD", "ts": now_ms()}


def kcat_produce(bootstrap: str, topic: str, keyed: list[tuple[str, dict[str, Any]]], codec: str) -> None:
    """One kcat run: its lines go out in a few batches (linger), compressed with `codec`,
    on the key's murmur2 partition (librdkafka's default is CRC32: see hostile records)."""
    lines = "".join(f"{key}\t{json.dumps(value)}\n" for key, value in keyed)
    subprocess.run([kcat(), "-P", "-q", "-b", bootstrap, "-t", topic, "-K", "\t", "-z", codec,
                    "-X", "partitioner=murmur2_random", "-X", "linger.ms=50", "-X", "enable.idempotence=true"],
                   input=lines.encode(), check=True, timeout=60, capture_output=True)


def outcomes(d: Deployment, worker: Worker, ids: set[str], timeout_s: float = 60) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = {o["event_id"]: o for o in run(topics.read_values(d.settings(), topics.OUTCOMES))
                 if o["event_id"] in ids}
        if len(found) == len(ids):
            return found
        assert worker.proc is not None and worker.proc.poll() is None, f"worker exited:\n{worker.tail()}"
        assert time.monotonic() < deadline, f"only {len(found)} of {len(ids)} outcomes"
        time.sleep(0.3)


@pytest.mark.parametrize("codec", CODECS)
def test_recharges_compressed_by_kcat_are_decided(
    live: tuple[Deployment, Worker], cluster: Cluster, codec: str
) -> None:
    d, worker = live
    users = [f"{codec}-u{i}" for i in range(USERS)]  # spread over the partitions
    keyed = [(u, recharge(f"{codec}-r{n}-{u}", u, 10 * (n + 1))) for n in range(PER_USER) for u in users]
    kcat_produce(d.bootstrap, d.topic(topics.RECHARGES), keyed, codec)
    assert codec in codecs_on_disk(cluster, d.topic(topics.RECHARGES))
    out = outcomes(d, worker, {ev["event_id"] for _, ev in keyed})
    assert all(o["status"] == "accepted" for o in out.values()), [o for o in out.values() if o["status"] != "accepted"]
    for u in users:  # each user's recharges in order: 10, 10+20, 10+20+30, ...
        balances = [out[f"{codec}-r{n}-{u}"]["balance_after"] for n in range(PER_USER)]
        assert balances == [5 * (n + 1) * (n + 2) for n in range(PER_USER)], (u, balances)
    assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
    assert worker.get("/health")[0] == 200
    assert not worker.crashes(), worker.crashes()


async def _produce_like_the_pipeline(bootstrap: str, topic: str, values: list[bytes], codec: str) -> None:
    """The pipeline's way (task.py, batches.py): a transactional producer, whole batches
    from create_batch, sent with send_batch; here with `codec`."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{topic}-tx", compression_type=codec,
                                linger_ms=0, max_batch_size=1_048_576)
    await producer.start()
    try:
        async with producer.transaction():
            builder = producer.create_batch()
            for i, value in enumerate(values):
                assert builder.append(timestamp=None, key=str(i).encode(), value=value) is not None
            await (await producer.send_batch(builder, topic, partition=0))
    finally:
        await producer.stop()


@pytest.mark.parametrize("codec", CODECS)
def test_batches_the_pipeline_compresses_are_read_by_kcat(cluster: Cluster, codec: str) -> None:
    topic = f"codec-{uuid.uuid4().hex[:8]}-{codec}"
    values = [json.dumps({"event_id": f"e{i}", "status": "accepted", "balance_after": i * 7}).encode()
              for i in range(200)]
    asyncio.run(_produce_like_the_pipeline(cluster.bootstrap, topic, values, codec))
    assert codecs_on_disk(cluster, topic) == {codec}
    out = subprocess.run([kcat(), "-C", "-q", "-b", cluster.bootstrap, "-t", topic, "-o", "beginning", "-e",
                          "-X", "isolation.level=read_committed", "-f", "%k\t%s\n"],
                         capture_output=True, check=True, timeout=60)
    assert out.stdout.decode().splitlines() == [f"{i}\t{v.decode()}" for i, v in enumerate(values)]


async def _fetch_without_snappy(
    bootstrap: str, topic: str
) -> tuple[dict[Any, list[Any]], dict[Any, BaseException], Any]:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    from pipeline.engine.fetch import fetch

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in (0, 1)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: dict[Any, list[Any]] = {}
        errors: dict[Any, BaseException] = {}
        deadline = time.monotonic() + 30
        while (not errors or len(records.get(tps[0], [])) < 5) and time.monotonic() < deadline:
            got, failed = await fetch(consumer, 100, 500)
            errors.update(failed)
            for tp, batch in got.items():
                records.setdefault(tp, []).extend(batch)
        return records, errors, (consumer.paused(), await consumer.position(tps[1]))
    finally:
        await consumer.stop()


def test_fetch_stops_only_the_partition_it_cannot_decode(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real broker and real batches (pipeline/engine/fetch.py): partition 1 holds a
    snappy batch that this consumer cannot decode (cramjam hidden), partition 0 plain ones."""
    import aiokafka.codec
    from aiokafka.errors import UnsupportedCodecError

    topic = f"codec-{uuid.uuid4().hex[:8]}-fetch"

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
        finally:
            await admin.close()

    asyncio.run(create())
    for partition, codec in ((1, "snappy"), (0, "none")):
        lines = "".join(f"k{i}\tv{i}\n" for i in range(5))
        subprocess.run([kcat(), "-P", "-q", "-b", cluster.bootstrap, "-t", topic, "-p", str(partition), "-K", "\t",
                        "-z", codec], input=lines.encode(), check=True, timeout=60, capture_output=True)
    monkeypatch.setattr(aiokafka.codec, "cramjam", None)
    records, errors, (paused, position) = asyncio.run(_fetch_without_snappy(cluster.bootstrap, topic))
    [(bad, error)] = errors.items()
    assert (bad.partition, type(error)) == (1, UnsupportedCodecError), errors
    assert [r.value for r in records[next(tp for tp in records if tp.partition == 0)]] == [
        f"v{i}".encode() for i in range(5)]
    assert not any(tp.partition == 1 for tp in records)
    assert paused == {bad} and position == 0
