"""Each worker's throughput, lag and dead letters, shared through Redis so that the
dashboard served by any worker shows the whole fleet.

A worker's Prometheus metrics describe that worker only (Prometheus sums them for
Grafana; the dashboard has no Prometheus to ask). Every PUBLISH_INTERVAL_S a worker
writes its report, a hash `fleet:worker:{id}` that expires after STALE_S, and scores
its id by report time in the sorted set `fleet:workers`; readers skip stale ids and
writers trim them, so a crashed worker drops out within STALE_S, and a stopping one
removes its report at once. Report times are Redis's clock (TIME), so a worker whose
clock is off cannot hide the others. Bounded: at most MAX_WORKERS reports are read.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio import Redis

from agents.readmodel.leaderboards import as_text
from pipeline import metrics, redis_client
from pipeline.invariants import require
from pipeline.settings import Settings

log = logging.getLogger(__name__)

WORKERS = "fleet:workers"
PUBLISH_INTERVAL_S = 2.0
STALE_S = 10.0
MAX_WORKERS = 256
EVENTS_RATE_WINDOW_S = 10.0
DEAD_LETTER_RATE_WINDOW_S = 60.0
TIMEOUT_S = 1.0


def report_key(worker: str) -> str:
    return f"fleet:worker:{worker}"


@dataclass(frozen=True, slots=True)
class Report:
    worker: str
    partitions: int
    events_per_s: float
    lag: int  # input messages behind, over the worker's partitions
    dead_letters: int  # since the worker started
    dead_letters_per_min: float
    ts: int  # ms, Redis's clock

    def __post_init__(self) -> None:
        require(self.partitions >= 0, 'self.partitions >= 0')
        require(self.lag >= 0, 'self.lag >= 0')
        require(self.dead_letters >= 0, 'self.dead_letters >= 0')
        require(self.events_per_s >= 0, 'self.events_per_s >= 0')
        require(self.dead_letters_per_min >= 0, 'self.dead_letters_per_min >= 0')


class Rate:
    """Per-second rate of a growing count over the last `window_s` (a bounded deque of
    samples taken every PUBLISH_INTERVAL_S)."""

    def __init__(self, window_s: float) -> None:
        self.samples: collections.deque[tuple[float, int]] = collections.deque(
            maxlen=int(window_s / PUBLISH_INTERVAL_S) + 1
        )

    def add(self, t: float, count: int) -> float:
        self.samples.append((t, count))
        (t0, c0), (t1, c1) = self.samples[0], self.samples[-1]
        return max(0.0, (c1 - c0) / (t1 - t0)) if t1 > t0 else 0.0


def worker_id(settings: Settings) -> str:
    """Host, port and pid: two workers on one host differ, and a restarted worker is a
    new entry (the old one goes stale) rather than a counter that jumps back."""
    return f"{socket.gethostname()}:{settings.web_port}:{os.getpid()}"


def _sum_samples(metric: Any, suffix: str = "") -> float:
    total: float = sum(s.value for m in metric.collect() for s in m.samples if s.name.endswith(suffix))
    return total


class Publisher:
    """Writes this worker's Report to Redis; a Redis failure is logged once and skipped
    (the ledger never waits on the dashboard)."""

    def __init__(self, settings: Settings, processed: Callable[[], int], partitions: Callable[[], int]) -> None:
        self.settings = settings
        self.worker = worker_id(settings)
        self.processed, self.partitions = processed, partitions
        self.events = Rate(EVENTS_RATE_WINDOW_S)
        self.dead = Rate(DEAD_LETTER_RATE_WINDOW_S)
        self.client = redis_client.connect(settings, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
        self.failing = False
        self.stopped = False
        self.lock = asyncio.Lock()  # a report is never written after close() removed it

    def report(self, now: float, redis_ms: int) -> Report:
        dead = int(_sum_samples(metrics.DEAD_LETTERS, "_total"))
        return Report(
            worker=self.worker, partitions=self.partitions(),
            events_per_s=round(self.events.add(now, self.processed()), 1),
            lag=int(_sum_samples(metrics.CONSUMER_LAG)), dead_letters=dead,
            dead_letters_per_min=round(60 * self.dead.add(now, dead), 1), ts=redis_ms,
        )

    async def publish(self, report: Report) -> None:
        key = self.settings.redis_key
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key(report_key(report.worker)), mapping={k: str(v) for k, v in asdict(report).items()})
            pipe.pexpire(key(report_key(report.worker)), int(STALE_S * 1000))
            pipe.zadd(key(WORKERS), {report.worker: report.ts})
            pipe.zremrangebyscore(key(WORKERS), "-inf", report.ts - int(STALE_S * 1000))
            await pipe.execute()

    async def run(self) -> None:
        while not self.stopped:
            try:
                async with self.lock:
                    if not self.stopped:
                        await self.publish(self.report(time.monotonic(), await redis_ms(self.client)))
                self.failing = False
            except (TimeoutError, aioredis.RedisError, OSError) as exc:
                if not self.failing:
                    log.warning("fleet report not written (Redis): %r; retrying every %.0f s", exc, PUBLISH_INTERVAL_S)
                self.failing = True
            await asyncio.sleep(PUBLISH_INTERVAL_S)

    async def close(self) -> None:
        """Leave the fleet now: the partitions move to the others, which must not be
        counted twice for STALE_S."""
        async with self.lock:
            self.stopped = True
            try:
                key = self.settings.redis_key
                await self.client.zrem(key(WORKERS), self.worker)
                await self.client.delete(key(report_key(self.worker)))
            except (TimeoutError, aioredis.RedisError, OSError):
                pass  # Redis away: the report expires by itself
            await self.client.aclose()


async def redis_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def summary(redis: Redis, prefix: str) -> dict[str, Any]:
    """The live workers' reports (without their time: a snapshot changes only when a
    number does) and their totals."""
    now_ms = await redis_ms(redis)
    ids = await redis.zrevrangebyscore(prefix + WORKERS, "+inf", now_ms - int(STALE_S * 1000), start=0, num=MAX_WORKERS)
    async with redis.pipeline(transaction=False) as pipe:
        for worker in ids:
            pipe.hgetall(prefix + report_key(as_text(worker)))
        found = [h for h in await pipe.execute() if h]  # expired meanwhile: skipped
    reports = sorted(({k: v for k, v in r.items() if k != "ts"} for r in map(_parse, found) if r is not None),
                     key=lambda r: r["worker"])
    return {
        "workers": reports,
        "events_per_s": round(sum(r["events_per_s"] for r in reports), 1),
        "lag": sum(r["lag"] for r in reports),
        "dead_letters_per_min": round(sum(r["dead_letters_per_min"] for r in reports), 1),
        "dead_letters": sum(r["dead_letters"] for r in reports),
    }


def _parse(h: dict[Any, Any]) -> dict[str, Any] | None:
    """A report as written by Publisher; None for anything else (another version's
    fields, a hand-edited key): the dashboard shows the others."""
    text = {as_text(k): as_text(v) for k, v in h.items()}
    try:
        report = Report(
            worker=text["worker"], partitions=int(text["partitions"]), events_per_s=float(text["events_per_s"]),
            lag=int(text["lag"]), dead_letters=int(text["dead_letters"]),
            dead_letters_per_min=float(text["dead_letters_per_min"]), ts=int(text["ts"]),
        )
    except (KeyError, ValueError, AssertionError):
        return None
    return asdict(report)
