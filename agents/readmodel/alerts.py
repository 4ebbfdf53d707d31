"""The latest fraud alerts in Redis, for dashboards.

A capped sorted set `fraud:alerts` (alert_id -> event time of the alert) indexes one
hash per alert, `alert:{alert_id}` (field `json`: the `fraud-alerts` record). Not a
Redis stream or list: alert ids are deterministic, so writing an alert twice (a retry,
a refill after a worker crash) keeps one entry. Only the newest MAX_FEED alerts stay;
the writer (redis_sink.py) deletes the hash of every alert it trims.
"""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from agents.readmodel.leaderboards import as_text
from pipeline.invariants import require

FEED = "fraud:alerts"
MAX_FEED = 10_000


def hash_name(alert_id: str) -> str:
    return f"alert:{alert_id}"


async def latest(redis: Redis, prefix: str, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` alerts, newest first (ties by alert id, descending)."""
    require(limit >= 1, 'limit >= 1')
    ids = await redis.zrevrange(prefix + FEED, 0, limit - 1)
    if not ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for alert_id in ids:
            pipe.hget(prefix + hash_name(as_text(alert_id)), "json")
        raw = await pipe.execute()
    return [json.loads(r) for r in raw if r is not None]  # None: trimmed meanwhile
