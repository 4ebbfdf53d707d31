"""When nothing more can come out of the pipeline for what was produced: every input
and internal record the worker group must read is applied and committed.

A measurement that stops reading alerts a few seconds after the last outcome never
sees a late false alert (a gift_loop alert comes from the creator stage, after the
gift's outcome). Alerts are written in the transaction that commits the offsets of
what caused them, so once no record the group must read lies between its committed
offsets and the ends of its inputs and of the internal topics between its stages,
every alert of what was produced is committed, and reading the alert topic to its end
reads them all. What lies there is read, not reckoned from offsets: transactional
topics hold commit and abort markers and aborted records, which take offsets no
consumer is given.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from pipeline import topics
from pipeline.settings import Settings

POLL_S = 0.2


async def unapplied(s: Settings, ends: dict[TopicPartition, int],
                    committed: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
    """Per partition, the records a read_committed reader is given between the group's
    committed offset and `ends` (partitions with none left out)."""
    behind = {tp: start for tp, start in committed.items() if start < ends[tp]}
    if not behind:
        return {}
    consumer = AIOKafkaConsumer(**s.kafka_options(), isolation_level="read_committed", enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(behind))
        for tp, start in behind.items():
            consumer.seek(tp, start)
        found: dict[TopicPartition, int] = {}
        while reading := [tp for tp in behind if await consumer.position(tp) < ends[tp]]:
            got = await consumer.getmany(*reading, timeout_ms=500)
            for tp, records in got.items():
                n = sum(1 for r in records if r.offset < ends[tp])
                if n:
                    found[tp] = found.get(tp, 0) + n
        return found
    finally:
        await consumer.stop()


async def settled(s: Settings, timeout_s: float,
                  names: Sequence[str] = (*topics.PARTITIONED_INPUTS, topics.CREATOR_OPS)) -> None:
    """Wait until the worker group has applied and committed every record of `names`
    (without prefix) below their ends as they are when called. Raises TimeoutError
    naming what is still unapplied."""
    group = AIOKafkaConsumer(**s.kafka_options(), group_id=s.group_id, enable_auto_commit=False,
                             isolation_level="read_committed")
    await group.start()
    try:
        tps = [TopicPartition(s.topic(n), p) for n in names for p in range(s.partitions)]
        ends = await group.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while True:
            committed = {tp: await group.committed(tp) or 0 for tp in tps}
            short = await unapplied(s, ends, committed)
            if not short:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker group {s.group_id} has not applied {sum(short.values())} records "
                                   f"after {timeout_s:.0f} s: "
                                   + ", ".join(f"{tp.topic}[{tp.partition}] {n}" for tp, n in sorted(short.items())))
            await asyncio.sleep(POLL_S)
    finally:
        await group.stop()
