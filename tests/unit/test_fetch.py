"""pipeline.engine.fetch against a stand-in consumer that fails the way aiokafka 0.14's
does (consumer/fetcher.py): buffered fetches are drained partition by partition; an
undecodable batch raises out of the whole call, after the partitions before it were
drained (positions advanced, records dropped with the exception)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import CorruptRecordException, KafkaError, UnsupportedCodecError
from aiokafka.structs import TopicPartition

from pipeline.engine.fetch import fetch

BAD = object()


class Consumer:
    def __init__(self, logs: dict[TopicPartition, list[Any]], errors: dict[TopicPartition, BaseException]) -> None:
        self.logs, self.errors = logs, errors  # log entries: a record, or BAD (an undecodable batch)
        self.positions = {tp: 0 for tp in logs}
        self._paused: set[TopicPartition] = set()
        self.seeks: list[tuple[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return set(self.logs)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, tp: TopicPartition) -> None:
        self._paused.add(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.positions[tp] = offset

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        await asyncio.sleep(0)
        drained: dict[TopicPartition, list[Any]] = {}
        for tp in sorted(tps or self.logs):
            if tp in self._paused:
                continue
            pos = self.positions[tp]
            got = []
            for entry in self.logs[tp][pos:pos + (max_records or 10**9)]:
                if entry is BAD:
                    raise self.errors[tp]  # drained partitions stay advanced: their records are lost
                got.append(entry)
            if got:
                self.positions[tp] = pos + len(got)
                drained[tp] = got
        return drained


A, B, C = (TopicPartition("t-recharges", p) for p in range(3))


def test_a_healthy_fetch_is_getmany() -> None:
    consumer = Consumer({A: [1, 2], B: [3]}, {})
    assert asyncio.run(fetch(consumer, 50, 100)) == ({A: [1, 2], B: [3]}, {})
    assert consumer.seeks == [] and consumer.paused() == set()


@pytest.mark.parametrize("error", [UnsupportedCodecError("Libraries for snappy compression codec not found"),
                                   CorruptRecordException("Invalid CRC - t-recharges-1")])
def test_only_the_undecodable_partition_stops_and_nothing_else_is_lost(error: BaseException) -> None:
    # A is drained before B raises: getmany alone would lose A's records.
    consumer = Consumer({A: [1, 2], B: [10, BAD, 12], C: [20]}, {B: error})
    records, errors = asyncio.run(fetch(consumer, 50, 90))
    assert records == {A: [1, 2], C: [20]}
    assert errors == {B: error}
    assert consumer.paused() == {B} and consumer.positions[B] == 0  # where it was: 10 is not skipped
    assert consumer.positions[A] == 2 and consumer.positions[C] == 1
    # Later calls go on with the others; the paused partition is not fetched.
    consumer.logs[A].append(3)
    assert asyncio.run(fetch(consumer, 50, 90)) == ({A: [3]}, {})


def test_an_error_that_is_not_a_partitions_data_is_raised() -> None:
    consumer = Consumer({A: [1], B: [BAD]}, {B: KafkaError("group authorization failed")})
    with pytest.raises(KafkaError, match="group authorization"):
        asyncio.run(fetch(consumer, 50, 10))
