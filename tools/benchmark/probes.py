"""What a benchmark watches while a run goes: consumer lag, a process's CPU and memory,
and the creators' leaderboard in Redis. Each probe samples on its own schedule into a
timeline the report plots; none of them slows the worker down beyond a few requests
per second."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from agents.readmodel import leaderboards
from pipeline.settings import Settings

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Lag:
    """Input records a consumer group has not committed: exact for topics written
    without transactions (every offset is a record), as the contract's inputs are."""

    def __init__(self, s: Settings, group_id: str, topics: list[str]) -> None:
        self.s, self.group_id, self.topics = s, group_id, topics
        self.consumer = AIOKafkaConsumer(**s.kafka_options(), group_id=group_id, enable_auto_commit=False)
        self.tps: list[TopicPartition] = []

    async def start(self) -> None:
        await self.consumer.start()
        self.tps = [TopicPartition(self.s.topic(t), p) for t in self.topics for p in range(self.s.partitions)]

    async def read(self) -> tuple[int, int]:
        """(records in the inputs, records committed by the group)."""
        ends = await self.consumer.end_offsets(self.tps)
        committed = 0
        for tp in self.tps:
            committed += await self.consumer.committed(tp) or 0
        return sum(ends.values()), committed

    async def stop(self) -> None:
        await self.consumer.stop()


@dataclass
class ProcStats:
    """CPU (percent of one core since the last sample) and memory of processes by pid."""

    pids: list[int]
    _last: tuple[float, float] | None = None
    peak_rss_mb: float = 0.0

    def _ticks(self) -> float:
        total = 0.0
        for pid in self.pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime + stime
            except (OSError, IndexError):
                pass
        return total / CLOCK_TICKS

    def rss_mb(self) -> float:
        total = 0.0
        for pid in self.pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
            except OSError:
                pass
        self.peak_rss_mb = max(self.peak_rss_mb, total)
        return total

    def sample(self) -> tuple[float, float]:
        """(cpu percent since the previous sample, rss MB now)."""
        now, ticks = time.monotonic(), self._ticks()
        cpu = 0.0
        if self._last is not None and now > self._last[0]:
            cpu = 100 * (ticks - self._last[1]) / (now - self._last[0])
        self._last = (now, ticks)
        return round(cpu, 1), round(self.rss_mb(), 1)

    def cpu_seconds(self) -> float:
        return self._ticks()


async def board_total(client: aioredis.Redis, s: Settings, prefix: str = "") -> int:
    """Sum of every creator's lifetime diamonds on the all-time board."""
    # withscores=True: (member, score) pairs; redis-py's type is the union of every zrange form.
    entries = cast("list[tuple[bytes | str, float]]",
                   await client.zrange(s.redis_key(prefix + leaderboards.CREATORS_ALL), 0, -1, withscores=True))
    return int(sum(score for _, score in entries))
