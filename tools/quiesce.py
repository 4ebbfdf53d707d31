"""When nothing more can come out of the pipeline for what was produced: every input
and internal record the worker group must read is applied and committed.

A measurement that stops reading alerts a few seconds after the last outcome never
sees a late false alert (a gift_loop alert comes from the creator stage, after the
gift's outcome). Alerts are written in the transaction that commits the offsets of
what caused them, so once the group's committed offsets reach the ends of its inputs
and of the internal topics between its stages, every alert of what was produced is
committed, and reading the alert topic to its end reads them all.
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
# Topics written in transactions end with a commit marker, which takes an offset that no
# consumer reads: a group that applied everything may stand one offset short of the end.
MARKER_OFFSETS = 1


def short_of(ends: dict[TopicPartition, int], committed: dict[TopicPartition, int],
             transactional: frozenset[str]) -> dict[TopicPartition, int]:
    """Per partition, the records the group has not committed (0s left out)."""
    short = {}
    for tp, end in ends.items():
        allowance = MARKER_OFFSETS if tp.topic in transactional else 0
        missing = end - allowance - committed.get(tp, 0)
        if missing > 0:
            short[tp] = missing
    return short


async def settled(s: Settings, timeout_s: float,
                  names: Sequence[str] = (*topics.INPUTS, topics.CREATOR_OPS)) -> None:
    """Wait until the worker group has committed `names` (without prefix) up to their
    ends as they are when called. Raises TimeoutError naming what is still short."""
    consumer = AIOKafkaConsumer(**s.kafka_options(), group_id=s.group_id, enable_auto_commit=False,
                                isolation_level="read_committed")
    await consumer.start()
    try:
        tps = [TopicPartition(s.topic(n), p) for n in names for p in range(s.partitions)]
        ends = await consumer.end_offsets(tps)
        transactional = frozenset(s.topic(n) for n in names if n in topics.INTERNAL)
        deadline = time.monotonic() + timeout_s
        while True:
            committed = {tp: await consumer.committed(tp) or 0 for tp in tps}
            short = short_of(ends, committed, transactional)
            if not short:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker group {s.group_id} has not committed "
                                   f"{sum(short.values())} records after {timeout_s:.0f} s: "
                                   + ", ".join(f"{tp.topic}[{tp.partition}] {n}" for tp, n in sorted(short.items())))
            await asyncio.sleep(POLL_S)
    finally:
        await consumer.stop()

