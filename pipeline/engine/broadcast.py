"""Broadcast inputs: topics every worker reads whole, whatever their partition count.

Some input is not keyed by what a partition owns (a promotion applies to every user):
each worker reads every partition of such a topic with its own group-less consumer,
from the beginning (the topic is compacted), and hands each record to the stage's sink,
one state per worker shared by its partitions.

Causal order (CONTRACT.md): a record acknowledged before an event of a partition was
produced must be applied before that event. The engine asks the broadcast topics' end
offsets in the same round trip as its inputs', after the cycle's fetch, and processes
the cycle only once the reader is at those ends (`catch_up`): whatever was acknowledged
before a fetched event is then in the sink.

Malformed records are dead-lettered exactly once by whichever worker owns partition 0
of the inputs: in that partition's transaction, with the offset below which every
broadcast record is answered committed in the group as the topic's offset
(`PartitionTask.broadcast_letters`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from pipeline.invariants import require
from pipeline.settings import Settings

log = logging.getLogger(__name__)

MAX_LETTERS = 10_000  # malformed broadcast records kept until partition 0 dead-letters them
FETCH_MS = 100
FETCH_RECORDS = 10_000


class BroadcastSink(Protocol):
    def apply(self, key: bytes | None, value: bytes | None, timestamp: int, now_ms: float) -> str | None:
        """Apply one record (in its partition's order); the error if it is malformed."""


@dataclass(frozen=True, slots=True)
class Letter:
    tp: TopicPartition
    offset: int
    key: bytes | None
    value: bytes | None
    error: str


class Broadcast:
    def __init__(self, settings: Settings, sinks: dict[str, BroadcastSink]) -> None:
        require(bool(sinks), "a broadcast reads at least one topic")
        self.settings = settings
        self.sinks = {settings.topic(t): sink for t, sink in sinks.items()}
        self.consumer: AIOKafkaConsumer | None = None
        self.tps: list[TopicPartition] = []
        self.letters: deque[Letter] = deque()
        self._positions: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            **self.settings.kafka_options(), group_id=None, enable_auto_commit=False,
            isolation_level="read_committed", auto_offset_reset="earliest", metadata_max_age_ms=30_000,
        )
        await self.consumer.start()
        # A consumer without subscriptions tracks no topic's metadata: track these (kept
        # fresh every metadata_max_age_ms, so added partitions are found). aiokafka has
        # no public way to do it.
        for topic in self.sinks:
            await self.consumer._client.add_topic(topic)
        await self._assign()

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None

    async def _assign(self) -> None:
        """Every partition of the topics (more if partitions were added since)."""
        consumer = self.consumer
        assert consumer is not None
        tps = sorted(TopicPartition(t, p) for t in self.sinks for p in consumer.partitions_for_topic(t) or ())
        new = [tp for tp in tps if tp not in self.tps]
        if new:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*new)
            for tp in self.tps:  # assign() forgets positions: keep the old ones
                consumer.seek(tp, self._positions[tp])
            self.tps = tps
        self._positions = {tp: await consumer.position(tp) for tp in self.tps}

    def position(self, tp: TopicPartition) -> int:
        return self._positions.get(tp, 0)

    async def catch_up(self, ends: dict[TopicPartition, int], now_ms: float, timeout_s: float) -> bool:
        """Read until every partition is at its offset in `ends` (asked after the cycle's
        fetch); False if an end is unknown or not reached within `timeout_s`."""
        consumer = self.consumer
        assert consumer is not None
        if sum(len(consumer.partitions_for_topic(t) or ()) for t in self.sinks) > len(self.tps):
            await self._assign()
        if not self.tps or any(tp not in ends for tp in self.tps):
            return False  # not even the partitions are known yet: wait
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while behind := [tp for tp in self.tps if self._positions[tp] < ends[tp]]:
            if loop.time() >= deadline:
                return False
            batch = await consumer.getmany(*behind, timeout_ms=FETCH_MS, max_records=FETCH_RECORDS)
            for tp, records in batch.items():
                sink = self.sinks[tp.topic]
                for r in records:
                    error = sink.apply(r.key, r.value, r.timestamp or 0, now_ms)
                    if error is not None:
                        if len(self.letters) >= MAX_LETTERS:
                            dropped = self.letters.popleft()
                            log.error("%s-%d offset %d: malformed, and more than %d wait for a dead letter: "
                                      "not dead-lettered", dropped.tp.topic, dropped.tp.partition, dropped.offset,
                                      MAX_LETTERS)
                        self.letters.append(Letter(tp, r.offset, r.key, r.value, error))
            for tp in behind:  # past control records too
                self._positions[tp] = await consumer.position(tp)
        return True

    def letters_between(self, marks: dict[TopicPartition, int]) -> list[Letter]:
        """The malformed records at or above `marks` (per partition) and below the
        reader's positions; older ones are dropped (answered)."""
        if self.letters:
            self.letters = deque(x for x in self.letters if x.offset >= marks.get(x.tp, 0))
        return [x for x in self.letters if marks.get(x.tp, 0) <= x.offset < self._positions.get(x.tp, 0)]
