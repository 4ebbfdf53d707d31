"""A transaction's records packed into Kafka record batches, one per topic-partition.

Why: aiokafka's `send()` costs an accumulator pass and a future per record, the largest
single cost of a batch's commit when every event writes three or four records. Building
the batches here costs one append per record and one future per batch. Keyed records
go where `send()` would put them (Kafka's default partitioner, murmur2 of the key).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from pipeline.engine.partitioning import partition_for
from pipeline.engine.signing import Signer
from pipeline.invariants import require

_partitioner = DefaultPartitioner()


class RecordBatches:
    def __init__(self, producer: AIOKafkaProducer, signer: Signer | None = None,
                 signed: frozenset[str] = frozenset()) -> None:
        self.producer = producer
        self.signer = signer  # signs the records of the `signed` topics (signing.py)
        self.signed = signed
        self._open: dict[tuple[str, int], Any] = {}  # (topic, partition) -> BatchBuilder
        self._partitions: dict[str, list[int]] = {}
        self._sent: list[asyncio.Future[Any]] = []

    async def add(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        if partition is None:
            partition = await self._partition_for(topic, key)
        headers = self.signer.headers(topic, partition, key, value) if self.signer and topic in self.signed else []
        builder = self._open.get((topic, partition))
        if builder is None:
            builder = self._open[topic, partition] = self.producer.create_batch()
        if builder.append(timestamp=None, key=key, value=value, headers=headers) is None:
            # Full: ship it and start the next one (a first record always fits).
            await self._ship(topic, partition, builder)
            builder = self._open[topic, partition] = self.producer.create_batch()
            require(builder.append(timestamp=None, key=key, value=value, headers=headers) is not None,
                    "a first record fits a batch")

    async def _partition_for(self, topic: str, key: bytes | None) -> int:
        parts = self._partitions.get(topic)
        if parts is None:
            parts = self._partitions[topic] = sorted(await self.producer.partitions_for(topic))
        if key is None:
            partition: int = _partitioner(key, parts, parts)
            return partition
        return parts[partition_for(key, len(parts))]

    async def _ship(self, topic: str, partition: int, builder: Any) -> None:
        self._sent.append(await self.producer.send_batch(builder, topic, partition=partition))

    async def flush(self) -> None:
        """Ship every open batch and wait until the broker acknowledged all of them: a
        transaction must not end with batches in flight (aiokafka would let it)."""
        for (topic, partition), builder in self._open.items():
            await self._ship(topic, partition, builder)
        self._open.clear()
        sent, self._sent = self._sent, []
        await asyncio.gather(*sent)
