"""What a benchmark watches while a run goes: the outcomes an engine made visible (the
end of a run is the read of its last one), consumer lag, processes' CPU and memory, and
the creators' leaderboard in Redis. Each probe samples on its own schedule into a
timeline the report plots; beyond reading the outcomes once, as any reader of them
would, none of them loads the broker with more than a few requests per second."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from agents.readmodel import leaderboards
from pipeline.settings import Settings

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_S = 1.0  # a timeline row each second
# An engine that read nothing new for this long after its first outcome will not finish:
# the run ends there, incomplete (its slowest rebalance or start-up takes well under it).
QUIET_S = 120.0


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
    """CPU (percent of one core since the last sample) and memory of processes by pid.
    With `tree`, of their descendants too, found at each reading (a launcher's JVM starts
    after the launcher), and CPU counts their waited-for children: `cpu_seconds` is then
    their whole CPU since they started, start-up included, read once at the run's end."""

    pids: list[int]
    tree: bool = False
    _last: tuple[float, float] | None = None
    peak_rss_mb: float = 0.0

    def members(self) -> list[int]:
        return family(self.pids) if self.tree else self.pids

    def _ticks(self, pids: list[int]) -> float:
        total = 0.0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime + stime
                if self.tree:
                    total += int(fields[13]) + int(fields[14])  # cutime + cstime
            except (OSError, IndexError):
                pass
        return total / CLOCK_TICKS

    def _rss_mb(self, pids: list[int]) -> float:
        total = 0.0
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
            except OSError:
                pass
        self.peak_rss_mb = max(self.peak_rss_mb, total)
        return total

    def rss_mb(self) -> float:
        return self._rss_mb(self.members())

    def sample(self) -> tuple[float, float]:
        """(cpu percent since the previous sample, rss MB now)."""
        pids = self.members()
        now, ticks = time.monotonic(), self._ticks(pids)
        cpu = 0.0
        if self._last is not None and now > self._last[0]:
            cpu = 100 * (ticks - self._last[1]) / (now - self._last[0])
        self._last = (now, ticks)
        return round(cpu, 1), round(self._rss_mb(pids), 1)

    def cpu_seconds(self) -> float:
        return self._ticks(self.members())


def family(roots: list[int]) -> list[int]:
    """`roots` and every live process descended from them (by parent pid)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.append(pid)
            todo.extend(children.get(pid, ()))
    return found


@dataclass
class Answered:
    """Expected outcomes read so far, and when: a run ends at the read that brings the
    last one, the moment every result is visible, not an estimate of it.

    Outcomes are told apart by event id (the contract keys `ledger-outcomes` by it).
    With `ids`, only those count, each once: a repeat (a replay after a crash, an
    at-least-once resend) or an outcome of no expected event does not. Without, each
    distinct id counts; or, with `distinct` off, each record: exact for a transactional
    writer such as ours, and no set of ten million ids."""

    expected: int
    ids: frozenset[bytes] | None = None
    distinct: bool = True
    count: int = 0
    records: int = 0
    first: float | None = None  # perf_counter of the first read that brought an expected outcome
    first_count: int = 0  # the outcomes that read brought
    last: float | None = None  # of the latest read that brought one: the end, once done
    _seen: set[bytes] = field(default_factory=set, repr=False)

    @classmethod
    def of(cls, ids: Iterable[bytes]) -> Answered:
        known = frozenset(ids)
        return cls(len(known), known)

    @property
    def done(self) -> bool:
        return self.count >= self.expected

    def add(self, event_ids: Iterable[bytes | None], now: float) -> None:
        """The event ids (record keys) of one read's records, read at `now`."""
        before = self.count
        for eid in event_ids:
            self.records += 1
            self.count += self._new(eid)
        if self.count > before:
            if self.first is None:
                self.first, self.first_count = now, self.count
            self.last = now

    def _new(self, eid: bytes | None) -> bool:
        if self.ids is not None:
            if eid not in self.ids:
                return False
        elif not self.distinct:
            return True
        if eid is None or eid in self._seen:
            return False
        self._seen.add(eid)
        return True

    def rate(self) -> float:
        """Outcomes per second from the first read to the last; the first read's own
        are left out, their processing having come before that span."""
        if self.first is None or self.last is None or self.last <= self.first:
            return 0.0
        return (self.count - self.first_count) / (self.last - self.first)

    def given_up(self, now: float, started: float, until_s: float) -> bool:
        """Past the run's time limit, or quiet for QUIET_S since its last new outcome."""
        return now - started > until_s or (self.last is not None and now - self.last > QUIET_S)


async def read_outcomes(s: Settings, topic: str, answered: Answered, started: float, stats: ProcStats, *,
                        alive: Callable[[], bool], until_s: float, inputs: Sequence[str] = (),
                        keep: bool = False) -> tuple[list[dict[str, float]], list[bytes]]:
    """Read `topic` from its start, read_committed (what a reader of the results sees),
    into `answered` until it is done, the engine's processes exited or it gave up. Gives
    a timeline row each second (new outcomes; lag: records of `inputs` not answered, or
    expected outcomes missing without `inputs`; CPU; memory) and, with `keep`, every
    record's value."""
    consumer = AIOKafkaConsumer(**s.kafka_options(), isolation_level="read_committed", enable_auto_commit=False,
                                fetch_max_wait_ms=50)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(s.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        sources = [TopicPartition(s.topic(t), p) for t in inputs for p in range(s.partitions)]
        rows: list[dict[str, float]] = []
        values: list[bytes] = []
        second, at_second = started + SAMPLE_S, answered.count
        stats.sample()
        while not answered.done and alive() and not answered.given_up(time.perf_counter(), started, until_s):
            got = await consumer.getmany(timeout_ms=100, max_records=20_000)
            now = time.perf_counter()
            while now >= second:  # the seconds that ended before this read
                total = sum((await consumer.end_offsets(sources)).values()) if sources else answered.expected
                cpu, rss = stats.sample()
                rows.append({"t": round(second - started, 1), "processed_per_s": answered.count - at_second,
                             "lag": total - answered.count, "cpu_pct": cpu, "rss_mb": rss})
                second, at_second = second + SAMPLE_S, answered.count
            for batch in got.values():
                answered.add([r.key for r in batch], now)
                if keep:
                    values.extend(r.value for r in batch)
        return rows, values
    finally:
        await consumer.stop()


async def board_total(client: aioredis.Redis, s: Settings, prefix: str = "") -> int:
    """Sum of every creator's lifetime diamonds on the all-time board."""
    # withscores=True: (member, score) pairs; redis-py's type is the union of every zrange form.
    entries = cast("list[tuple[bytes | str, float]]",
                   await client.zrange(s.redis_key(prefix + leaderboards.CREATORS_ALL), 0, -1, withscores=True))
    return int(sum(score for _, score in entries))
