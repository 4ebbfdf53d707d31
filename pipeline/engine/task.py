"""One partition's work: its stages, their merges, and its transactional producer.

Exactly-once, the Kafka way: each partition has its own transactional id, so the
worker that takes a partition over fences the previous owner (a zombie can no longer
commit) and aborts its open transaction before restoring state from the changelog.
A batch's outputs, changelog records and input offsets commit in one transaction, so
state, outcomes and progress never disagree, whenever a worker dies.
"""

from __future__ import annotations

import base64
import itertools
import logging
import time
from typing import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from agents.ingest.decode import Malformed
from pipeline import metrics
from pipeline.engine.batches import RecordBatches
from pipeline.engine.merge import NO_TIME, EventTimeMerge, Pending
from pipeline.engine.stage import Output, ReadModelUpdate, Stage
from pipeline.settings import Settings
from pipeline.topics import DEAD_LETTERS, MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

class TransactionFailed(Exception):
    """A partition's batch could not be committed (broker, fencing, producer state):
    nothing of it took effect, and the partition must be rebuilt from Kafka."""

    def __init__(self, partition: int, cause: BaseException) -> None:
        super().__init__(f"transaction failed: {cause.__class__.__name__}: {cause}")
        self.partition = partition
        self.cause = cause


# Buffered input records per topic-partition above which fetching it pauses: at least
# a batch (PIPELINE_MAX_BATCH), and with ~0.5 KB per decoded record, 16 input partitions
# of one worker hold at most ~80 MB.
MAX_BUFFERED = 10_000
TRANSACTION_TIMEOUT_MS = 120_000  # above a broker restart (see Engine._recover)


class PartitionTask:
    def __init__(self, partition: int, stages: list[Stage], settings: Settings) -> None:
        self.partition = partition
        self.stages = stages
        self.settings = settings
        self.merges = [EventTimeMerge(s.inputs, settings.max_idle_ms) for s in stages]
        self.stage_of = {topic: i for i, s in enumerate(stages) for topic in s.inputs}
        # Offset after the last processed record, per input topic (unprefixed).
        self.next_offsets: dict[str, int] = {}
        self.committed_offsets: dict[str, int] = {}
        self.out = Output()
        # Offset after the last record buffered, per input: where fetching resumes.
        self.fetch_next: dict[str, int] = {}
        self.producer: AIOKafkaProducer | None = None

    @property
    def transactional_id(self) -> str:
        return f"{self.settings.topic('ledger-tx')}-{self.partition}"

    def tp(self, topic: str) -> TopicPartition:
        return TopicPartition(self.settings.topic(topic), self.partition)

    @property
    def input_topics(self) -> list[str]:
        return list(self.stage_of)

    async def start_producer(self) -> None:
        """Create the producer and fence any previous owner of this partition."""
        self.producer = AIOKafkaProducer(
            **self.settings.kafka_options(),
            transactional_id=self.transactional_id,
            transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
            max_batch_size=1_048_576,
            max_request_size=MAX_MESSAGE_BYTES,
            linger_ms=0,  # batches are built whole (batches.py): nothing to wait for
            request_timeout_ms=30_000,
        )
        await self.producer.start()
        await self.producer.begin_transaction()  # InitProducerId: fences the old epoch
        await self.producer.commit_transaction()

    async def stop(self) -> None:
        """Stop producing and release the state (rebuilt from the changelog if the
        partition comes back)."""
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None
        for stage in self.stages:
            stage.close()

    def add(self, topic: str, records: list) -> None:
        stage = self.stages[self.stage_of[topic]]
        merge = self.merges[self.stage_of[topic]]
        assert records[0].offset >= self.fetch_next[topic], "records from before a seek"
        self.fetch_next[topic] = records[-1].offset + 1
        for r in records:
            item, ts = stage.decode(topic, r.key, r.value)
            # The raw record is kept only for a dead letter: buffered input is the
            # worker's largest memory when it lags (see MAX_BUFFERED).
            bad = isinstance(item, Malformed)
            merge.add(Pending(NO_TIME if ts is None else ts, topic, r.offset, r.key if bad else None,
                              r.value if bad else None, item))

    def buffered(self, topic: str) -> int:
        return self.merges[self.stage_of[topic]].buffered(topic)

    def process(self, caught_up: Callable[[str], bool | None], now_ms: float) -> int:
        """Run the merged records that are ready through their stages; returns how many."""
        n = 0
        for stage, merge in zip(self.stages, self.merges):
            stage.tick(self.out, now_ms)
            for p in itertools.islice(merge.drain(caught_up, now_ms), self.settings.max_batch):
                if isinstance(p.item, Malformed):
                    self._dead_letter(p)
                else:
                    stage.handle(p.topic, p.item, self.out)
                self.next_offsets[p.topic] = p.offset + 1
                n += 1
            idle = all(not merge.buffered(t) and caught_up(t) is True for t in stage.inputs)
            stage.end_batch(self.out, idle, now_ms)
        return n

    def _dead_letter(self, p: Pending) -> None:
        assert isinstance(p.item, Malformed)
        self.out.dead_letters.append(p.topic)
        self.out.send(DEAD_LETTERS, None if p.key is None else p.key.decode("utf-8", "replace"), {
            "source_topic": self.settings.topic(p.topic),
            "partition": self.partition,
            "offset": p.offset,
            "error": p.item.error,
            "payload_b64": base64.b64encode(p.value or b"").decode(),
        })

    @property
    def has_work(self) -> bool:
        return bool(self.out.messages) or self.next_offsets != self.committed_offsets

    async def commit(self) -> list[ReadModelUpdate]:
        """Commit the batch: outputs, changelogs and offsets in one transaction."""
        assert self.producer is not None
        started = time.perf_counter()
        producer, prefix = self.producer, self.settings.topic_prefix
        out, self.out = self.out, Output()
        try:
            async with producer.transaction():
                batches = RecordBatches(producer)
                for m in out.messages:
                    await batches.add(prefix + m.topic, m.key, m.value, m.partition)
                for stage in self.stages:
                    topic = prefix + stage.changelog_topic
                    for key, value in stage.changelog():
                        await batches.add(topic, key.encode(), value, self.partition)
                await batches.flush()
                offsets = {
                    self.tp(t): OffsetAndMetadata(o, "")
                    for t, o in self.next_offsets.items()
                    if self.committed_offsets.get(t) != o
                }
                if offsets:
                    await producer.send_offsets_to_transaction(offsets, self.settings.group_id)
        except Exception as exc:
            metrics.TRANSACTIONS.labels("aborted").inc()
            for stage in self.stages:
                stage.abort()
            raise TransactionFailed(self.partition, exc) from exc
        metrics.TRANSACTIONS.labels("committed").inc()
        self.committed_offsets = dict(self.next_offsets)
        updates = [u for stage in self.stages for u in stage.commit()]
        metrics.count_outcomes(out.outcomes, time.time())
        metrics.count_alerts(out.alerts)
        metrics.DIAMONDS_CREDITED.inc(out.diamonds_credited)
        for topic in out.dead_letters:
            metrics.DEAD_LETTERS.labels(topic).inc()
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        return updates

    def rewind(self) -> dict[str, int]:
        """Forget buffered and uncommitted input; returns where to seek (the last commit)."""
        for merge in self.merges:
            merge.clear()
        self.out = Output()
        self.next_offsets = dict(self.committed_offsets)
        self.fetch_next = dict(self.committed_offsets)
        return dict(self.committed_offsets)
